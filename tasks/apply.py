"""Running a host's deploy or undeploy (a Job, tasks/job.py): connect, probe, plan, then apply
the plans step by step over the one connection, with progress per step, dry-run diffs, bounds
and Ctrl-C."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from .bounds import action_bound
from .host_errors import ConnectionLost, HostError, command_error
from .install import install_script
from .interrupt import STOP, Interrupted
from .interrupt import check as check_interrupt
from .job import Job
from .lock import Lock, LockBusy, origin, registered, run_locked
from .plan import Action, Event, StepName, StepPlan, events_in
from .probe import Facts, probe_facts, probe_script
from .remote import Remote, connected
from .report import URL_PASSWORD, Cut, HostResult, Reporter, Timer, mask_lines
from .runner import parse_sections
from .shell import batch, batch_failure
from .target import Target

# A Redis ACL password hash (`user NAME ... #<sha256>`): masked in diffs as a password is
ACL_HASH = re.compile(r"#[0-9a-f]{64}\b")


class SkipHost(Exception):
    """The host is left as it is (e.g. its broker host failed); the message says why."""


class Place(Protocol):
    """A host's place in the fleet (tasks/fleet.py's Place)."""

    def values(self, facts: Facts) -> dict[str, str | None]: ...
    def before_apply(self) -> None: ...
    def before_step(self, step: str) -> None: ...


def deploy_host(target: Target, remote: Remote, reporter: Reporter, job: Job,
                dry_run: bool = False, place: Place | None = None) -> HostResult:
    """Connect, probe, plan, apply: the `job` (a deploy, tasks/deploy.py deploy_job, or an
    undeploy, tasks/undeploy.py undeploy_job). `place`: the host's place in the fleet
    (tasks/fleet.py): its shared values (the broker password, a cluster's Erlang cookie) once
    the probe answered, and what it waits for before applying and before each step; SkipHost
    from it leaves the host as it is (before a step: the job ends there on this host)."""
    task = job.name
    result = HostResult(host=target.host.name)

    def say(step: str, text: str) -> None:
        reporter.line(target.host.name, f"{step:<12} {text}")

    timer = Timer()
    reporter.add_secrets(remote.sudo_password)
    if not connected(remote, say, result):
        return result
    try:
        try:
            check_interrupt()
            spec = job.spec(dry_run)
            if dry_run:     # changes nothing: takes no lock, and waits for nobody
                output = remote.run_root(probe_script(spec), "probe", timeout=target.inventory.bounds.probe,
                                         bound="bounds.probe").stdout
            else:           # the project's lock on the host, held until the connection closes
                lock = Lock(target.inventory.project.name, task, target.inventory.bounds.lock, origin())
                output = run_locked(remote, lock, probe_script(spec), "probe", target.inventory.bounds.probe,
                                    bound="bounds.probe", say=lambda text: say("lock", text), hold=True)
                remote.wrap_each = registered(lock)
            facts = probe_facts(parse_sections(output))
        except Interrupted:
            return interrupted(result, say, [], [StepName.PROBE, *job.steps], task=task)
        except LockBusy as exc:
            say("lock", f"failed: {exc}")
            result.failed, result.error = 1, str(exc)
            return result
        except Exception as exc:  # noqa: BLE001 - reported per host
            text = failure_text(exc, task)
            say("probe", f"failed: {text}")
            result.failed, result.error = 1, text if isinstance(exc, HostError) else f"probe: {text}"
            return result
        result.ok += 1
        say("probe", f"ok ({facts.os.get('pretty_name', '?')}, {'systemd' if facts.systemd else 'no systemd'}, "
                     f"{timer})")
        try:
            values = place.values(facts) if place is not None else {}
            plans = job.plan(facts, values)
            blocked = next((p for p in plans if p.error), None)
            if blocked:
                # decided before anything ran: the host is untouched
                say(blocked.name, f"failed: {blocked.error} (nothing was changed)")
                result.failed, result.error = 1, f"{blocked.name}: {blocked.error}"
                return result
            if place is not None:
                place.before_apply()
        except SkipHost as exc:
            say("deploy", f"skipped: {exc}")
            result.failed, result.error = 1, f"skipped: {exc}"
            return result
        except Interrupted:
            return interrupted(result, say, [StepName.PROBE], [p.name for p in plans], task=task)
        events: set[Event] = set()      # what actions reported, for later ones (Action.when)
        done_steps: list[str] = [StepName.PROBE]
        for stage in stages(plans, dry_run):
            if STOP.is_set() and not dry_run:
                result.interrupted = True
            if result.interrupted:
                break
            if place is not None and not dry_run:
                try:
                    place.before_step(stage[0].name)
                except SkipHost as exc:
                    say(stage[0].name, f"failed: {exc}")
                    result.failed, result.error = 1, f"{stage[0].name}: {exc}"
                    break
            if len(stage) == 1:
                ok = run_step(stage[0], remote, target, reporter, result, dry_run, events, task)
                if ok:
                    done_steps.append(stage[0].name)
                    continue
                break
            # independent steps at once, each on its own channel of the one connection
            parts = [HostResult(host=target.host.name) for _ in stage]
            with ThreadPoolExecutor(len(stage)) as pool:
                done = list(pool.map(lambda pair: run_step(pair[0], remote, target, reporter, pair[1],
                                                           dry_run, events, task), zip(stage, parts, strict=True)))
            for plan, part, ok in zip(stage, parts, done, strict=True):
                result.ok += part.ok
                result.changed += part.changed
                result.failed = result.failed or part.failed
                result.error = result.error or part.error
                result.notes += part.notes
                result.cut += part.cut
                result.interrupted = result.interrupted or part.interrupted
                if ok:
                    done_steps.append(plan.name)
            if not all(done):
                break
        if result.interrupted and not result.failed:
            cut_names = {c.step for c in result.cut}
            rest = [p.name for p in plans if p.name not in done_steps and p.name not in cut_names]
            interrupted(result, say, done_steps, rest, [str(c) for c in result.cut], task=task)
        return result
    finally:
        remote.close()


# Steps that need only what `system` installed, and nothing from each other: the broker's
# restart and the pip install overlap on a first deploy.
CONCURRENT_STEPS = (StepName.BROKER, StepName.PYTHON)


def stages(plans: list[StepPlan], dry_run: bool = False) -> list[list[StepPlan]]:
    """The plans in order, the consecutive CONCURRENT_STEPS that both change something in one
    stage (with --dry-run, whose output should read in order, each step alone)."""
    result: list[list[StepPlan]] = []
    for plan in plans:
        previous = result[-1] if result else []
        if (not dry_run and plan.name in CONCURRENT_STEPS and plan.changed and previous
                and all(p.name in CONCURRENT_STEPS and p.changed for p in previous)):
            previous.append(plan)
        else:
            result.append([plan])
    return result


def interrupted(result: HostResult, say: Callable[[str, str], None], done: list[str], rest: list[str],
                cut: list[str] = (), task: str = "deploy") -> HostResult:
    """The host's line and recap after Ctrl-C: which steps were done, which not."""
    parts = [f"done: {', '.join(done) or 'nothing'}"]
    if cut:
        parts.append(f"stopped part-way: {', '.join(cut)}")
    parts.append(f"not started: {', '.join(rest) or 'nothing'}")
    text = "; ".join(parts)
    say(task, f"interrupted (Ctrl-C): {text}. The next {task} completes the work")
    result.interrupted = True
    result.notes.append(f"interrupted (Ctrl-C): {text}")
    return result


def failure_text(exc: Exception, task: str = "deploy") -> str:
    """A host's failure in one line: a lost connection says what was under way, that the connection
    was lost, and that the next run of the task completes the work (decided by the exception's
    type, never its text)."""
    if isinstance(exc, ConnectionLost):
        return exc.line(task)
    return str(exc) if isinstance(exc, HostError) else f"{type(exc).__name__}: {exc}"


def run_step(plan: StepPlan, remote: Remote, target: Target, reporter: Reporter, result: HostResult,
             dry_run: bool, events: set[Event] | None = None, task: str = "deploy") -> bool:
    def say(text: str) -> None:
        reporter.line(target.host.name, f"{plan.name:<12} {text}")

    events = set() if events is None else events
    if dry_run:
        for action in (*plan.checks, *plan.actions):
            say(f"would {action.summary}" + (" if pip installs or upgrades anything" if action.when else ""))
            for upload in action.uploads:
                if upload.diff:
                    reporter.plain(file_diff(upload.target, upload.old_content, upload.content, upload.secret,
                                             after=task))
        if not plan.changed:
            say(f"ok ({plan.noop})")
        result.ok += 1
        result.changed += plan.counts_as_change
        return True
    timer = Timer()
    layout = target.layout
    bounds = target.inventory.bounds
    quick = dict(timeout=bounds.quick, bound="bounds.quick")
    ran = 0
    groups = action_groups((*plan.checks, *plan.actions))
    try:
        for index, group in enumerate(groups):
            if STOP.is_set():
                if index:
                    result.cut.append(Cut(plan.name, sum(len(g) for g in groups[:index]), sum(map(len, groups))))
                result.interrupted = True
                return False
            if len(group) > 1:
                for action in group:
                    say(action.summary)
                run_batch(remote, group, **quick)
                ran += len(group)
                continue
            action = group[0]
            if action.when and action.when not in events:
                continue
            say(action.summary)
            if action.uploads:
                tmpdir = remote.upload_private(action.uploads)
                before_rename = "\n".join(filter(None, [plan.record_pending, action.before_rename]))
                script = install_script(tmpdir, action.uploads, layout, before_rename)
                remote.run_root(script, action.summary, **quick)
            if action.script:
                seconds, bound = action_bound(bounds, plan.name, action.quick, target.inventory.celery.stopwaitsecs)
                out = remote.run_root(action.script, action.summary, timeout=seconds, bound=bound, progress=say)
                events.update(events_in(out.stdout))
            ran += 1
            if action.note:
                result.notes.append(action.note)
        if plan.after_success:   # bookkeeping once every action succeeded (clear_pending)
            remote.run_root(plan.after_success, f"{plan.name} (bookkeeping)", **quick)
    except Exception as exc:  # noqa: BLE001 - a host's failure is reported, never a traceback
        text = failure_text(exc, task)
        say(f"failed: {text}")
        result.failed, result.error = 1, f"{plan.name}: {text.splitlines()[0]}"
        return False
    if plan.changed and not ran:
        # every action waited for an event that did not come (pip changed nothing)
        say("ok (pip changed nothing in the virtualenv: no restart needed)")
    elif plan.looks_only:
        say(f"ok ({plan.noop}, {timer})")
    else:
        say(f"changed ({timer})" if plan.changed else f"ok ({plan.noop})")
    result.ok += 1
    result.changed += bool(ran) and not plan.looks_only
    return True


def action_groups(actions: tuple[Action, ...]) -> list[list[Action]]:
    """Consecutive quick script-only actions together (one remote command for them); any
    other action stands alone."""
    groups: list[list[Action]] = []
    for action in actions:
        batchable = action.quick and not action.uploads
        if not batchable or not groups or not (groups[-1][-1].quick and not groups[-1][-1].uploads):
            groups.append([action])
        else:
            groups[-1].append(action)
    return groups


def run_batch(remote: Remote, actions: list[Action], timeout: int | None = None, bound: str = "") -> None:
    """Run script-only actions as one command; a failure names the action that failed."""
    result = remote.run_root(batch([a.script for a in actions]), actions[0].summary, check=False,
                             timeout=timeout, bound=bound)
    if result.exited == 0:
        return
    index, stderr = batch_failure(result.stderr)
    failed = actions[index] if index is not None else actions[-1]
    raise command_error(failed.summary, result.stdout, stderr, result.exited, remote.mask)


def file_diff(path: str, old: str | None, new: str, secret: bool, after: str = "deploy") -> str:
    """A unified diff for --dry-run. Passwords in URLs are masked in every file; in a file that
    holds secrets (settings_local.py, the broker's config) only the changed lines are shown,
    with the value of any password-, secret- or token-like setting masked too."""
    lines = difflib.unified_diff(
        (old or "").splitlines(), new.splitlines(),   # a missing last newline is no change worth showing
        fromfile=f"{path} (on the host)" if old is not None else "/dev/null",
        tofile=f"{path} (after {after})", n=0 if secret else 3, lineterm="",
    )
    text = "\n".join(lines)
    return ACL_HASH.sub("#********", mask_lines(text)) if secret else URL_PASSWORD.sub(r"\1********@", text)
