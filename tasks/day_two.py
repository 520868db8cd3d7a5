"""How a day-two task runs on its hosts (tasks/cli.py builds the operations, tasks/operations.py
says what each runs and what its output means): one host's operation (connect, its one script,
under the project's lock if it changes the host, read, report), all hosts `parallel` at a time,
or a rolling restart, batch after batch, that stops once too many hosts failed.
"""

from __future__ import annotations

from collections.abc import Callable

from .host_errors import HostError
from .interrupt import STOP
from .inventory import HostSpec
from .lock import Lock, origin, run_locked
from .operation import Operation, OperationResult, Outcome
from .remote import Remote, connected
from .report import HostResult, Reporter, Timer, run_hosts
from .rolling import rolling_batches, too_many_failed
from .runner import ScriptOutputError, parse_sections, run_script


def run_operation(c, host: HostSpec, op: Operation, reporter: Reporter, quiet: bool = False) -> OperationResult:
    """One operation on one host: connect, run its one script, read what it printed, report."""
    result = OperationResult(host=host.name)

    def say(step: str, text: str) -> None:
        if not quiet and step:
            first, *more = text.splitlines() or [""]
            reporter.line(host.name, "\n".join([f"{step:<12} {first}", *(f"{'':<12} {line}" for line in more)]))
        elif not quiet:
            reporter.line(host.name, text)

    if op.skip:
        say(op.step, f"ok ({op.skip})")
        result.ok = 1
        return result
    timer = Timer()
    remote = Remote(host, c.config, secrets=reporter.secrets, bounds=c.config.get("fabcelery_bounds"))
    try:
        if not connected(remote, say, result):
            return result
        result.reached = True
        if op.summary:
            say(op.step, op.summary)
        try:
            if op.locks:    # a task that changes the host: under the project's lock (tasks/lock.py)
                lock = Lock(c.config["fabcelery_project"], op.locks, remote.bounds.lock, origin())
                output = run_locked(remote, lock, op.script, op.step, op.timeout,
                                    say=lambda text: say("lock", text))
                outcome = op.read(parse_sections(output))
            else:
                outcome = op.read(run_script(remote, op.script, op.step, op.timeout))
        except (HostError, ScriptOutputError) as exc:
            outcome = Outcome([f"failed: {exc}"], failed=str(exc))
    finally:
        remote.close()
    lines = list(outcome.lines)
    if lines and op.timed:
        lines[0] = lines[0][:-1] + f"; {timer})" if lines[0].endswith(")") else lines[0] + f" ({timer})"
    if lines:
        say(op.step, "\n".join(lines))
    result.outcome = outcome
    if outcome.failed:
        result.failed, result.error = 1, outcome.failed
    else:
        result.ok, result.changed = 1, int(outcome.changed)
    return result


def on_hosts(c, hosts: list[HostSpec], build: Callable[[HostSpec], Operation], reporter: Reporter,
             parallel: int, quiet: bool = False) -> list[OperationResult]:
    """Each host's operation, `parallel` hosts at a time."""
    by_name = {h.name: h for h in hosts}
    reporter.set_hosts(list(by_name))
    return run_hosts(list(by_name), lambda name: run_operation(c, by_name[name], build(by_name[name]), reporter,
                                                               quiet), parallel)


def rolling_restart(c, hosts: list[HostSpec], build, reporter: Reporter, parallel: int, size: int,
                    step: str = "restart", max_fail: int = 0) -> list[HostResult]:
    """Batch after batch; once hosts that failed after they were reached are more than `max_fail`
    percent of the hosts (0: the first), the rest are left as they are (they keep consuming).

    A host that cannot be reached at all is reported and passed over: nothing changed on it.
    """
    reporter.set_hosts([h.name for h in hosts])
    by_name = {h.name: h for h in hosts}
    results: dict[str, HostResult] = {}
    for host in hosts:
        if build(host).skip:   # nothing to restart there (no programs, or not the pool asked for)
            results[host.name] = run_operation(c, host, build(host), reporter)
    batches = rolling_batches([h.name for h in hosts if h.name not in results], size)
    reporter.plain(f"rolling restart, {size} host{'s' if size > 1 else ''} at a time: "
                   + " -> ".join(", ".join(batch) for batch in batches))
    halted, why = "", ""
    failed = 0
    for batch in batches:
        if STOP.is_set() and not halted:
            halted = "Ctrl-C"
        if halted:
            for name in batch:
                reason = "Ctrl-C stopped the rolling restart" if halted == "Ctrl-C" else \
                    f"{halted} failed{why}, so the rolling restart stopped"
                reporter.line(name, f"{step:<12} skipped: {reason} (this host was not touched)")
                results[name] = HostResult(host=name, error="not restarted: " + (
                    "Ctrl-C came first" if halted == "Ctrl-C" else f"{halted} failed first"))
            continue
        work = lambda name: run_operation(c, by_name[name], build(by_name[name]), reporter)  # noqa: E731
        for result in run_hosts(batch, work, parallel):
            results[result.host] = result
            if result.failed and result.reached:
                failed += 1
                if not halted and too_many_failed(failed, len(hosts), max_fail):
                    halted = result.host
                    why = (f" ({failed} of {len(hosts)} hosts failed, more than --max-fail {max_fail}%)"
                           if max_fail else "")
    return [results[h.name] for h in hosts]

