"""Day-two operations: start, stop, restart, restart-broker, shutdown, ping, logs and check
(fab status is tasks/status.py, the rolling restart's arithmetic tasks/rolling.py).

Everything here is pure. For each task and host there is an Operation (tasks/operation.py):
the one program that runs on the host (tasks/scripts/*.sh, given its values as arguments),
and a function that reads the sections it printed (tasks/runner.py) and says what happened
(an Outcome). tasks/day_two.py runs the operations over SSH, concurrently across hosts, and
reports.
"""

from __future__ import annotations

import re

from .operation import (
    Operation,
    Outcome,
    host_program,
    last_lines,
    not_running_of,
    pids_of,
    ping_answers,
    program_states,
)
from .programs import Program, stop_seconds
from .rabbitmq_cluster import CLUSTER_TIMEOUT, cluster_hosts, rabbit_node
from .report import printable
from .runner import Section, Sections
from .scripts import text
from .supervisor import parse_status, start_direct
from .target import Target

# How long a started worker may take to answer `celery inspect ping` (an Arches
# project's worker needs 10-15 s after start: it imports all of Arches).
READY_TIMEOUT = 120

# `celery inspect ping -d NODE --timeout 2` returns as soon as that worker answers.
PING_TIMEOUT = 2

MAX_LOG_LINES = 10000


def _worker_options(target: Target, table: list[Program]) -> dict[str, object]:
    """What workers.sh needs: the workers to ping (celery_ping: each PROGRAM=FILE, its node name
    read from its program file), the bound of wait_ready, the logs to show when it failed."""
    return {"workers": " ".join(f"{p.name}={p.config}" for p in table if p.is_worker),
            "app": target.inventory.celery.app,
            "workdir": target.inventory.project.path, "pingtimeout": PING_TIMEOUT, "readytimeout": int(READY_TIMEOUT),
            "logs": " ".join(p.log for p in table),
            # wait_running reads the status over the socket (lib.sh sv_status): 0.02 s of CPU, not 0.2 s
            "socket": target.layout.socket, "statuspy": text("supervisor_status.py")}


def _no_programs(table: list[Program], step: str, pool: str | None) -> Operation | None:
    if not table:
        why = f"the pool {pool} does not run on this host" if pool else "no celery programs on this host"
        return Operation(step, "", skip=why)
    return None


def stop_operation(target: Target, pool: str | None = None) -> Operation:
    """Stop the celery programs (or one pool's): TERM to the worker, which finishes its running tasks first."""
    table = target.pool_programs(pool)
    if skip := _no_programs(table, "stop", pool):
        return skip
    programs = [p.name for p in table]
    lines = host_program(target, "stop.sh", programs=programs)

    def read(s: Sections) -> Outcome:
        if "down" in s:
            return Outcome([f"ok (supervisord is not running: {', '.join(programs)} not running)"])
        before = program_states(s["before"].text, programs)
        was_running = [n for n, p in before.items() if p and p.state in ("RUNNING", "STARTING", "BACKOFF")]
        after = program_states(s["after"].text, programs)
        still = [f"{n} is {p.state}" for n, p in after.items() if p and p.state not in ("STOPPED", "EXITED", "FATAL")]
        missing = [n for n, p in after.items() if p is None]
        if still or missing or not s["stop"].ok:
            why = "; ".join(still + [f"{n} is not configured in supervisord" for n in missing]) \
                or last_lines(s["stop"].text)
            return Outcome([f"failed: {why}"], failed=why)
        if not was_running:
            return Outcome([f"ok ({', '.join(programs)} already stopped)"])
        return Outcome([f"stopped {', '.join(was_running)}"], changed=True)

    return Operation("stop", f"stop {', '.join(programs)} (warm shutdown: running tasks finish first)",
                     lines, read, stop_seconds(table) + 60, locks="stop-celery")


def start_operation(target: Target, pool: str | None = None) -> Operation:
    """Start the celery programs or one pool's (and supervisord, if it is down); wait for the workers to answer."""
    table = target.pool_programs(pool)
    if skip := _no_programs(table, "start", pool):
        return skip
    layout = target.layout
    programs = [p.name for p in table]
    unit = layout.unit_name
    lines = host_program(target, "workers.sh", "start.sh", programs=programs, options={
        **_worker_options(target, table), "unit": unit, "unitfile": layout.unit_file,
        "startdirect": start_direct(layout)})
    workers = [p for p in table if p.is_worker]

    def read(s: Sections) -> Outcome:
        if "supervisord" in s and not s["supervisord"].ok:
            why = "supervisord did not start: " + last_lines(s["supervisord"].text)
            return Outcome([f"failed: {why}"], failed=why)
        before = program_states(s["before"].text, programs)
        was = [n for n, p in before.items() if not p or p.state != "RUNNING"]
        ready = s["ready"]
        if not ready.ok:
            return _not_ready(ready, s, programs, workers)
        started = "supervisord and " if "supervisord" in s else ""
        pids = pids_of(ready.text, programs)
        detail = ", ".join(f"{n} pid {pids[n]}" for n in programs)
        ping = _answers(ready.text, workers)
        if not was and "supervisord" not in s:
            return Outcome([f"ok (already running: {detail}{ping})"])
        return Outcome([f"started {started}{', '.join(was) or 'programs'}: {detail}{ping}"], changed=True)

    return Operation("start", f"start {', '.join(programs)}", lines, read, READY_TIMEOUT + 120, locks="start-celery")


def restart_operation(target: Target, pool: str | None = None) -> Operation:
    """supervisorctl restart (of every program, or one pool's): TERM (warm shutdown, up to
    stopwaitsecs), start, then wait for ping."""
    table = target.pool_programs(pool)
    if skip := _no_programs(table, "restart", pool):
        return skip
    programs = [p.name for p in table]
    workers = [p for p in table if p.is_worker]
    lines = host_program(target, "workers.sh", "restart.sh", programs=programs,
                     options=_worker_options(target, table))

    def read(s: Sections) -> Outcome:
        if "down" in s:
            why = "supervisord is not running: `fab start-celery` starts it"
            return Outcome([f"failed: {why}"], failed=why)
        before = pids_of(s["before"].text, programs)
        ready = s["ready"]
        if not ready.ok:
            return _not_ready(ready, s, programs, workers)
        after = pids_of(ready.text, programs)
        same = [n for n in programs if before[n] and before[n] == after[n]]
        if same:
            why = f"{', '.join(same)} kept the same pid: not restarted ({last_lines(s['restart'].text)})"
            return Outcome([f"failed: {why}"], failed=why)
        detail = ", ".join(f"{n} pid {before[n] or '-'} -> {after[n]}" for n in programs)
        ping = _answers(ready.text, workers)
        return Outcome([f"restarted {detail}{ping}"], changed=True, before=before, after=after)

    return Operation("restart", f"restart {', '.join(programs)} (warm shutdown: running tasks finish first)",
                     lines, read, stop_seconds(table) + READY_TIMEOUT + 120, locks="restart-celery")


def _not_ready(ready: Section, s: dict[str, Section], programs: list[str], workers: list[Program]) -> Outcome:
    problems = not_running_of(ready.text, programs)
    if not problems and workers:
        silent = [p.name for p in workers if p.name + "@" not in " ".join(_nodes_answering(ready.text))]
        which = "the worker" if len(workers) == 1 else f"the worker{'s' if len(silent) > 1 else ''} " + \
            ", ".join(silent or [p.name for p in workers])
        problems = [f"{which} does not answer celery inspect ping within {READY_TIMEOUT} s: "
                    f"{last_lines(ready.text, 2)}"]
    why = "; ".join(problems) or last_lines(ready.text)
    lines = [f"failed: {why}"]
    if "log" in s:
        lines += ["last lines of the log:"] + ["  " + line for line in s["log"].text.splitlines()]
    return Outcome(lines, failed=why)


def _nodes_answering(text: str) -> list[str]:
    return re.findall(r"->\s+(\S+?):\s+OK", text)


def _answers(text: str, workers: list[Program]) -> str:
    """'; celery@h answers ping' (or 'celery@h, exports@h answer ping'), for the outcome's line."""
    nodes = _nodes_answering(text)
    if not workers:
        return ""
    if not nodes:
        return "; the worker answers ping"
    return f"; {', '.join(nodes)} answer{'s' if len(nodes) == 1 else ''} ping"


def broker_restart_operation(target: Target) -> Operation:
    """Restart this host's broker and wait until it is back. A cluster node first waits
    (bounded) until every quorum queue has a member more online than its quorum and checks
    that no queue depends on this node (RabbitMQ's rolling-upgrade checks: rabbitmq-upgrade
    await_online_quorum_plus_one, rabbitmq-diagnostics check_if_node_is_quorum_critical);
    after the restart it waits until the node runs, every node of the cluster runs, and the
    quorum queues have all their members online again."""
    if not target.manages_broker:
        return Operation("broker", "", skip="no broker on this host")
    kind = target.broker
    unit = kind.unit
    t = int(CLUSTER_TIMEOUT)
    cluster = target.in_cluster
    expected = sorted(rabbit_node(h) for h in cluster_hosts(target.inventory))
    up, options = kind.restart_program()
    script = host_program(target, up, "restart-broker.sh", options={
        **options, "unit": unit, "timeout": t, "expected": " ".join(expected) if cluster else ""})
    node = rabbit_node(target.host) if cluster else unit.removesuffix(".service")

    def read(s: Sections) -> Outcome:
        for name, what in (("quorum", "the quorum queues do not have a member more than their quorum online, "
                                      f"so stopping {node} now could make them unavailable"),
                           ("critical", f"{node} is quorum-critical (a quorum queue would lose its quorum)"),
                           ("restart", f"systemctl restart {unit} failed"),
                           ("startup", f"{node} did not start within {t} s"),
                           ("back", f"not every node of the cluster ({', '.join(expected)}) runs within {t} s"),
                           ("synced", f"the quorum queues did not get all their members online within {t} s")):
            if name in s and not s[name].ok:
                why = f"{what}: {last_lines(s[name].text, 2) or 'exit status ' + str(s[name].rc)}"
                if name in ("quorum", "critical"):
                    why += " (not restarted)"
                return Outcome([f"failed: {why}"], failed=why)
        done = f"restarted {node}" + ("; back in the cluster, every quorum queue's members online" if cluster
                                      else "; it answers")
        return Outcome([done], changed=True)

    return Operation("broker", f"restart {node}" + (" (after the quorum checks)" if cluster else ""),
                     script, read, 4 * t + 120, locks="restart-broker")


def shutdown_operation(target: Target) -> Operation:
    """Stop supervisord and its programs cleanly: the systemd unit, or supervisorctl shutdown."""
    if skip := _no_programs(target.programs, "shutdown", None):
        return skip      # a broker-only host has no supervisord of ours
    layout = target.layout
    unit = layout.unit_name
    limit = stop_seconds(target.programs) + 60
    lines = host_program(target, "shutdown.sh", options={"unit": unit, "limit": limit})

    def read(s: Sections) -> Outcome:
        if "down" in s:
            return Outcome(["ok (supervisord is not running)"])
        if not s["gone"].ok:
            failed = next((s[k] for k in ("systemd", "ctl") if k in s and not s[k].ok), None)
            why = "supervisord is still running" + (f": {last_lines(failed.text)}" if failed else "")
            return Outcome([f"failed: {why}"], failed=why)
        stopped = [p.name for p in parse_status(s["before"].text) if p.state in ("RUNNING", "STARTING", "BACKOFF")]
        how = f"systemctl stop {unit}" if "systemd" in s else "supervisorctl shutdown"
        boot = "; still enabled: starts at boot" if s["enabled"].ok else ""
        return Outcome([f"stopped supervisord ({how}) and {', '.join(stopped) or 'no running program'}{boot}"],
                       changed=True)

    return Operation("shutdown", "stop supervisord and its programs (warm shutdown)", lines, read,
                     limit + 90, locks="shutdown")


def ping_operation(target: Target, pool: str | None = None) -> Operation:
    """`celery inspect ping -d celery@HOST,...`: does each worker (pool) of this host answer?"""
    workers = [p for p in target.pool_programs(pool) if p.is_worker]
    if not workers:
        return Operation("ping", "", skip=f"the pool {pool} does not run on this host" if pool
                         else "no worker on this host")
    lines = host_program(target, "workers.sh", "ping.sh", options=_worker_options(target, workers))

    def read(s: Sections) -> Outcome:
        nodes = s["node"].text.strip().split(",")
        answers = ping_answers(s["ping"].text)
        silent = [n for n in nodes if n not in answers]
        out = [f"{n} answers: {answers[n]}" for n in nodes if n in answers]
        if not silent:
            return Outcome(out)
        detail = last_lines(s["ping"].text, 2) or "exit status " + str(s["ping"].rc)
        why = f"{', '.join(silent)} do{'es' if len(silent) == 1 else ''} not answer: {detail}"
        return Outcome([f"failed: {why}", *out], failed=why)

    return Operation("ping", "", lines, read, PING_TIMEOUT + 60)


def check_lines(value: object) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_LOG_LINES:
        raise ValueError(f"--lines must be a number from 1 to {MAX_LOG_LINES}, not {text!r}")
    return int(text)


def logs_operation(target: Target, lines: int, pool: str | None = None) -> Operation:
    """The last `lines` lines of the workers' and beat's logs on this host (or one pool's)."""
    files = [p.log for p in target.pool_programs(pool)]
    if not files:
        return Operation("", "", skip=f"the pool {pool} does not run on this host, so no logs" if pool
                         else "no celery programs on this host, so no logs")
    script = host_program(target, "logs.sh", options={"lines": int(lines)}, programs=files)

    def read(s: Sections) -> Outcome:
        out: list[str] = []
        for i, path in enumerate(files):
            out.append(f"==> {path} <==")
            section = s[f"log{i}"]
            if not section.ok:
                out.append(f"(cannot read it: {printable(last_lines(section.text)) or 'no such file'})")
            else:
                # a log line is the programs' (and their tasks') text: it must not drive the terminal
                out.extend([printable(line) for line in section.text.splitlines()] or ["(empty)"])
        return Outcome(out)

    return Operation("", "", script, read, 60, timed=False)


def check_operation(target: Target, queues: list[str], timeout: int) -> Operation:
    """`fab check` from this host: a canary into each of `queues`, and who took it (tasks/check.py)."""
    from .check import CANARY_TASK, expected_nodes, report_of
    from .configs import BEGIN_MARKER, END_MARKER

    layout = target.layout
    script = host_program(target, "canary.sh", programs=queues, options={
        "canarypy": text("canary.py"), "settings": layout.settings_local, "begin": BEGIN_MARKER,
        "end": END_MARKER, "timeout": timeout, "expected": expected_nodes(target.inventory)})

    def read(s: Sections) -> Outcome:
        report = report_of(s["canary"].text)
        if "error" in report:
            why = f"the check could not run here: {printable(str(report['error']))}"
            return Outcome([f"failed: {why}"], failed=why, report=report)
        return Outcome([], report=report)

    # connect and import Celery, the first poll, the canaries' bound, the last poll, the Redis cleanup
    many = len(queues) > 1
    summary = (f"{len(queues)} canar{'ies' if many else 'y'} from here: Celery's built-in {CANARY_TASK}, already "
               f"expired, so the worker that takes {'each' if many else 'it'} discards it unrun")
    return Operation("check", summary, script, read, timeout + 60, timed=False)

