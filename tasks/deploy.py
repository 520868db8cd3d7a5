"""The deploy, per host: connect, probe, decide every step, then run the plans."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from .bounds import action_bound
from .broker import (
    broker_for,
    broker_needs,
    broker_unit,
    broker_url,
    celery_problem,
    cluster_hosts,
    fragment,
    fragment_context,
    manages_broker,
    needs_password,
    node_context,
    plan_broker,
    rabbitmq_node_files,
    redis_auth_env,
)
from .configs import (
    TEMPLATES,
    TemplateError,
    config_files,
    configs_needs,
    plan_configs,
    render,
    template_context,
)
from .interrupt import STOP, Interrupted
from .interrupt import check as check_interrupt
from .inventory import HostSpec, Inventory, InventoryError
from .layout import Layout
from .plan import Action, StepPlan, fail
from .probe import Facts, ProbeSpec, list_dists, probe_facts, probe_script
from .programs import program_of_config, programs_for
from .pyenv import plan_python, python_needs
from .remote import (
    STALE_UPLOAD_MINUTES,
    UPLOAD_PREFIX,
    URL_PASSWORD,
    HostError,
    Remote,
    command_error,
    install_script,
    mask_lines,
)
from .report import HostResult, Reporter, Timer
from .runner import run_script
from .shell import batch, batch_failure, cmd
from .supervisor import parse_status, plan_supervisord, plan_verify, supervisorctl, supervisord_needs
from .system import plan_system, runs_celery, system_needs, user_home

# A Redis ACL password hash (`user NAME ... #<sha256>`): masked in diffs as a password is
ACL_HASH = re.compile(r"#[0-9a-f]{64}\b")
TEMPLATES_ENV = "FABCELERY_TEMPLATES"
# A line a remote script prints on stdout to tell the deploy that something happened which a
# later action depends on (Action.when): "fabcelery-event: venv_changed".
EVENT = "fabcelery-event: "
VENV_CHANGED = "venv_changed"
PENDING_VENV = "virtualenv"     # the pending record's line: the programs still run the old virtualenv


def template_dirs(environ: dict | None = None) -> list[Path]:
    """Where templates are looked up: FABCELERY_TEMPLATES (if set) first, then templates/.

    A file in that directory wins over the one of the same name in templates/, so a
    project can change one template (or a test can break one) and keep the others.
    """
    named = (os.environ if environ is None else environ).get(TEMPLATES_ENV)
    if not named:
        return [TEMPLATES]
    path = Path(named).expanduser()
    if not path.is_dir():
        raise InventoryError(f"{TEMPLATES_ENV}={named}: no such directory (it names a directory of templates "
                             f"that win over the ones in {TEMPLATES}). Nothing was changed.")
    return [path, TEMPLATES]


def pending_file(inventory: Inventory) -> str:
    """Config files installed whose change supervisord has not applied yet (see with_pending)."""
    return f"{Layout(inventory.project).fabcelery_dir}/pending-apply"


def pending_targets(inventory: Inventory, facts: Facts) -> list[str]:
    text = facts.contents.get(pending_file(inventory)) or ""
    return [line for line in text.splitlines() if line.startswith("/")]


def with_pending(inventory: Inventory, host: HostSpec, configs: StepPlan, pending: list[str]) -> StepPlan:
    """The configs step, told what an earlier deploy installed and did not get to apply.

    The files a deploy changes are recorded on the host after they pass validation and
    before they are renamed into place, and the record is removed once every action of
    the supervisord step has succeeded (clear_pending). A deploy cut off in between leaves
    the record, and the next deploy applies those files as if it had changed them: the
    files on disk are right then, but the running programs are not.
    """
    changes = configs.configs
    changed = list(dict.fromkeys([*changes.changed, *pending]))
    if not changed:
        return configs
    programs = {f.target: f.programs for f in config_files(inventory, host)}
    # a recorded program file that this host should not have (any more): a removal to apply
    removed = [t for t in pending if t not in programs and program_of_config(inventory, t)]
    layout = Layout(inventory.project)
    record = "\n".join([
        # the virtualenv's line (with_venv_restart) stays: it is applied by the same step
        "{ " + cmd("grep", "-sx", PENDING_VENV, pending_file(inventory)) + " || :; "
        + cmd("printf", "%s\\n", *changed) + "; } > " + cmd(pending_file(inventory) + ".new"),
        cmd("mv", "-f", pending_file(inventory) + ".new", pending_file(inventory)),
    ])
    changes = replace(
        changes,
        changed=tuple(changed),
        changed_programs=tuple(sorted({*changes.changed_programs,
                                       *(p for target in pending for p in programs.get(target, ()))})),
        removed=tuple(sorted({*changes.removed, *removed})),
        removed_programs=tuple(sorted({*changes.removed_programs,
                                       *(program_of_config(inventory, t) for t in removed)})),
        # the unit was installed, supervisord maybe not restarted: restart it (what changed is not known)
        unit_restart=(changes.unit_restart and layout.unit_file in changes.changed) or layout.unit_file in pending,
    )
    # every other change of the step (a removal) records it before it runs
    actions = tuple(replace(a, script=record + "\n" + a.script) if a.script and not a.uploads else a
                    for a in configs.actions)
    # record: run by the install script between validation and renames
    return replace(configs, actions=actions, configs=changes, record_pending=record)


def remove_stale_uploads(configs: StepPlan, facts: Facts) -> StepPlan:
    """Private upload directories of deploys cut off mid-upload (they may hold a part of a
    file with a password): removed with the configs step of a later deploy."""
    stale = [path for path in facts.stale_tmp if re.fullmatch(re.escape(UPLOAD_PREFIX) + "[A-Za-z0-9]+", path)]
    if not stale:
        return configs
    what = "directory" if len(stale) == 1 else "directories"
    action = Action(f"remove {len(stale)} upload {what} left by a deploy that was cut off",
                    cmd("rm", "-rf", "--", *stale))
    return replace(configs, actions=(*configs.actions, action))


# kombu before 5.4 can stop taking tasks after Redis restarted (kombu#2007, fixed in 5.4.0):
# seen on test servers with celery 5.3.6 (Arches' pin) and kombu 5.3.7
KOMBU_RESUMES_AFTER_REDIS_RESTART = (5, 4)


def restart_after_redis(inventory: Inventory, host: HostSpec, facts: Facts, broker: StepPlan, configs: StepPlan,
                        supervisord: StepPlan) -> StepPlan:
    """When the broker step restarts this host's Redis and the virtualenv's kombu may not
    resume consuming afterwards, the supervisord step restarts the running programs that it
    would not restart anyway."""
    if not broker.restarts_redis or not facts.supervisord_running:
        return supervisord
    version = facts.dists.get("kombu", "")
    try:
        if tuple(int(part) for part in version.split(".")[:2]) >= KOMBU_RESUMES_AFTER_REDIS_RESTART:
            return supervisord
    except ValueError:
        pass   # not known: restart, to be safe
    if any(a.summary.startswith(("start supervisord", "restart supervisord", "supervisord runs outside"))
           for a in supervisord.actions):
        return supervisord   # every program starts anew
    layout = Layout(inventory.project)
    changed = set(configs.configs.changed)
    restarted = set(configs.configs.changed_programs)
    programs = [p.name for p in programs_for(inventory, host)]
    if layout.settings_local in changed:
        restarted |= set(programs)
    others = [p for p in programs if p not in restarted]
    if not others:
        return supervisord
    action = Action(f"restart {', '.join(others)} (Redis restarted; kombu {version or '?'} may not resume "
                    "consuming: kombu#2007)", supervisorctl(layout, "restart", *others))
    return replace(supervisord, actions=(*supervisord.actions, action))


def clear_pending(inventory: Inventory, supervisord: StepPlan, configs: StepPlan,
                  python: StepPlan | None = None) -> StepPlan:
    """Once supervisord has applied the changes, forget them (see run_step's `after_success`)."""
    if not configs.configs.changed and not (python and python.changed) and not supervisord.venv_restart:
        return supervisord
    return replace(supervisord, after_success=cmd("rm", "-f", pending_file(inventory)))


def pending_venv(inventory: Inventory, facts: Facts) -> bool:
    text = facts.contents.get(pending_file(inventory)) or ""
    return PENDING_VENV in text.splitlines()


def _dist_listing(virtualenv: str) -> str:
    return f"$({list_dists(virtualenv)} | cksum)"


def watch_virtualenv(inventory: Inventory, python: StepPlan) -> StepPlan:
    """The pip action, telling whether it installed, upgraded or removed anything: the list of
    the virtualenv's distributions (name and version) before and after. When it changed, the
    action records it (PENDING_VENV) and reports VENV_CHANGED."""
    venv = inventory.project.virtualenv
    actions = []
    for action in python.actions:
        if action.summary.startswith("pip install"):
            action = replace(action, script="\n".join([
                f"_before={_dist_listing(venv)}",
                "(\n" + action.script + "\n) || exit $?",
                f'if [ "$_before" != "{_dist_listing(venv)}" ]; then',
                f"  echo {cmd(PENDING_VENV)} >> {cmd(pending_file(inventory))}",
                f"  echo {cmd(EVENT + VENV_CHANGED)}",
                "fi",
            ]))
        actions.append(action)
    return replace(python, actions=tuple(actions))


def with_venv_restart(inventory: Inventory, host: HostSpec, facts: Facts, python: StepPlan, configs: StepPlan,
                      supervisord: StepPlan) -> StepPlan:
    """The supervisord step, with a graceful restart of the programs that run from the virtualenv
    when pip changed it: once, and only of the programs that the step does not (re)start anyway.

    Decided from the facts: if pip runs, the restart is planned to happen only if pip installed
    or upgraded something (Action.when); if an earlier deploy changed the virtualenv and did not
    get to restart them (the pending record says so), it happens unconditionally.
    """
    layout = Layout(inventory.project)
    earlier = pending_venv(inventory, facts)
    programs = [p.name for p in programs_for(inventory, host)]
    if not (python.changed or earlier) or not programs or not facts.supervisord_running:
        return supervisord      # nothing runs from an old virtualenv: supervisord starts them afresh
    changed = set(configs.configs.changed)
    if layout.supervisord_conf in changed or layout.unit_file in changed or layout.settings_local in changed:
        return supervisord      # the step restarts supervisord, or every program
    if facts.systemd and not facts.service_active(layout.unit_name):
        return supervisord      # supervisord is handed over to systemd: restarted with its programs
    restarted = set(configs.configs.changed_programs)
    states = {p.name: p.state for p in parse_status(facts.supervisor_status)}
    running = [p for p in programs if p not in restarted and states.get(p) in ("RUNNING", "STARTING",
                                                                                          "BACKOFF")]
    if not running:
        return supervisord
    why = "the virtualenv changed" if earlier else "pip changed the virtualenv"
    action = Action(f"restart {', '.join(running)} ({why}; warm shutdown)",
                    supervisorctl(layout, "restart", *running),
                    when="" if earlier else VENV_CHANGED,
                    note=f"restarted {', '.join(running)}: {why}")
    return replace(supervisord, actions=(*supervisord.actions, action), venv_restart=True)


def probe_spec(inventory: Inventory, host: HostSpec, with_contents: bool = False) -> ProbeSpec:
    """The deploy's one probe: the union of what each step needs to know (with contents:
    the files' text too, for --dry-run's diffs)."""
    project = inventory.project
    own = ProbeSpec(
        # preflight: the project's code is there, and not behind a link
        paths=(f"{project.path}/{project.name}",),
        contents=(pending_file(inventory),),
        redis_auth=redis_auth_env(inventory),
        stale_tmp=(UPLOAD_PREFIX.removeprefix("/tmp/") + "*", STALE_UPLOAD_MINUTES),
    )
    parts = [system_needs(inventory, host), python_needs(inventory), own,
             configs_needs(inventory, host, with_contents), broker_needs(inventory, host, with_contents),
             supervisord_needs(inventory)]
    spec = parts[0]
    for part in parts[1:]:
        spec = spec.union(part)
    return spec


def preflight(inventory: Inventory, host: HostSpec, facts: Facts) -> StepPlan | None:
    """Problems that must stop the deploy before anything on the host changes."""
    os_ids = {facts.os.get("id", "")} | set(facts.os.get("id_like", "").split())
    if not os_ids & {"debian", "ubuntu"}:
        name = facts.os.get("pretty_name") or facts.os.get("id") or "an unknown system"
        return fail("preflight", f"the host runs {name}; fabcelery deploys to Debian and Ubuntu only")
    package_dir = f"{inventory.project.path}/{inventory.project.name}"
    state = facts.paths.get(package_dir)
    if runs_celery(host) and state is not None and state.kind == "link":
        return fail("preflight", f"{package_dir} is a symbolic link: fabcelery writes settings_local.py there "
                                 "and never through a link; point project.path at the real directory")
    if runs_celery(host) and (state is None or state.kind != "directory"):
        return fail(
            "preflight",
            f"{package_dir} is not there: put the project's code at project.path "
            f"({inventory.project.path}) first; fabcelery deploys its Celery side, not the code",
        )
    if problem := celery_problem(inventory, host, facts):
        return fail("preflight", problem)
    return None


def plan_deploy(inventory: Inventory, host: HostSpec, facts: Facts, password: str | None = None,
                templates: list[Path] | None = None, cookie: str | None = None) -> list[StepPlan]:
    """Every step's decision, from the probe's facts (and the fleet's broker password and, for a
    RabbitMQ cluster, its Erlang cookie) alone."""
    templates = templates or template_dirs()
    problem = preflight(inventory, host, facts)
    if problem:
        return [problem]
    home = user_home(inventory, facts)
    local_broker = broker_unit(inventory) if manages_broker(inventory, host) else None
    context = template_context(inventory, host, facts, home, broker_url(inventory, host, password), local_broker)
    # a RabbitMQ cluster: Celery declares its queues as quorum queues (settings_local.block.j2)
    context["quorum_queues"] = bool(cluster_hosts(inventory))
    system = plan_system(inventory, host, facts)
    broker_fragment, node_files = "", ()
    if manages_broker(inventory, host):
        broker = broker_for(inventory, host)
        if needs_password(inventory, broker) and not password:
            return [fail("broker", "no broker password was given (the project's own account needs one)")]
        context.update(fragment_context(inventory, broker, password))
        try:
            broker_fragment = render(fragment(inventory, host)[1], context, templates)
            if files := rabbitmq_node_files(inventory, host):
                node = {**context, **node_context(inventory, host, facts.hostname)}
                node_files = tuple((f, render(f.template, node, templates)) for f in files)
        except TemplateError as exc:
            return [fail("broker", str(exc))]
    broker = plan_broker(inventory, host, facts, password, broker_fragment, node_files, cookie)
    python = watch_virtualenv(inventory, plan_python(inventory, host, facts, home))
    configs = with_pending(inventory, host, plan_configs(inventory, host, facts, context, templates),
                           pending_targets(inventory, facts))
    configs = remove_stale_uploads(configs, facts)
    supervisord = with_venv_restart(inventory, host, facts, python, configs,
                                    plan_supervisord(inventory, host, facts, configs))
    supervisord = restart_after_redis(inventory, host, facts, broker, configs, supervisord)
    supervisord = clear_pending(inventory, supervisord, configs, python)
    steps = [system, broker, python, configs, supervisord]
    anything = any(step.changed for step in steps)
    return steps + [plan_verify(inventory, host, facts, home, anything)]


class SkipHost(Exception):
    """The host is left as it is (e.g. its broker host failed); the message says why."""


class Place(Protocol):
    """A host's place in the fleet (tasks/fleet.py's Place)."""

    def values(self, facts: Facts) -> dict[str, str | None]: ...
    def before_apply(self) -> None: ...
    def before_step(self, step: str) -> None: ...


def deploy_host(inventory: Inventory, host: HostSpec, remote: Remote, reporter: Reporter,
                dry_run: bool = False, place: Place | None = None,
                spec: ProbeSpec | None = None,
                planner: Callable[[Facts], list[StepPlan]] | None = None, task: str = "deploy") -> HostResult:
    """Connect, probe, plan, apply. `spec` and `planner(facts)`: another probe and plan than
    the deploy's, run the same way (`fab undeploy`: tasks/undeploy.py). `place`: the host's
    place in the fleet (tasks/fleet.py): its shared values (the broker password, a cluster's
    Erlang cookie) once the probe answered, and what it waits for before applying and before
    each step; SkipHost from it leaves the host as it is (before a step: the deploy of this
    host ends there). `task`: what the host's lines call the run ("undeploy")."""
    result = HostResult(host=host.name)

    def say(step: str, text: str) -> None:
        reporter.line(host.name, f"{step:<12} {text}")

    timer = Timer()
    reporter.add_secrets(remote.sudo_password)
    try:
        remote.open()
    except HostError as exc:
        say("connect", f"failed: {exc}")
        result.failed, result.error = 1, str(exc)
        return result
    try:
        result.ok += 1
        try:
            check_interrupt()
            spec = spec or probe_spec(inventory, host, with_contents=dry_run)
            facts = probe_facts(run_script(remote, probe_script(spec), "probe", inventory.bounds.probe,
                                           bound="bounds.probe"))
        except Interrupted:
            steps = ["system", "broker", "python", "configs", "supervisord", "verify"] if task == "deploy" else []
            return interrupted(result, say, [], ["probe", *steps] if steps else ["probe", "every step"], task=task)
        except Exception as exc:  # noqa: BLE001 - reported per host
            say("probe", f"failed: {exc}")
            result.failed, result.error = 1, str(exc) if isinstance(exc, HostError) else f"probe: {exc}"
            return result
        result.ok += 1
        say("probe", f"ok ({facts.os.get('pretty_name', '?')}, {'systemd' if facts.systemd else 'no systemd'}, "
                     f"{timer})")
        try:
            values = place.values(facts) if place is not None else {}
            plans = planner(facts) if planner else plan_deploy(inventory, host, facts, values.get("password"),
                                                               cookie=values.get("cookie"))
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
            return interrupted(result, say, ["probe"], [p.name for p in plans], task=task)
        events: set[str] = set()      # what actions reported, for later ones (Action.when)
        done_steps: list[str] = ["probe"]
        for stage in stages(plans, dry_run):
            if STOP.is_set() and not dry_run:
                result.data["interrupted"] = True
            if result.data.get("interrupted"):
                break
            if place is not None and not dry_run:
                try:
                    place.before_step(stage[0].name)
                except SkipHost as exc:
                    say(stage[0].name, f"failed: {exc}")
                    result.failed, result.error = 1, f"{stage[0].name}: {exc}"
                    break
            if len(stage) == 1:
                ok = run_step(stage[0], remote, inventory, reporter, host, result, dry_run, events)
                if ok:
                    done_steps.append(stage[0].name)
                    continue
                break
            # independent steps at once, each on its own channel of the one connection
            parts = [HostResult(host=host.name) for _ in stage]
            with ThreadPoolExecutor(len(stage)) as pool:
                done = list(pool.map(lambda pair: run_step(pair[0], remote, inventory, reporter, host, pair[1],
                                                           dry_run, events), zip(stage, parts, strict=True)))
            for plan, part, ok in zip(stage, parts, done, strict=True):
                result.ok += part.ok
                result.changed += part.changed
                result.failed = result.failed or part.failed
                result.error = result.error or part.error
                result.notes += part.notes
                result.data.setdefault("cut", []).extend(part.data.get("cut", []))
                result.data["interrupted"] = result.data.get("interrupted") or part.data.get("interrupted")
                if ok:
                    done_steps.append(plan.name)
            if not all(done):
                break
        if result.data.get("interrupted") and not result.failed:
            cut = result.data.get("cut", [])
            cut_names = {c.split(" ")[0] for c in cut}
            rest = [p.name for p in plans if p.name not in done_steps and p.name not in cut_names]
            interrupted(result, say, done_steps, rest, cut, task=task)
        return result
    finally:
        remote.close()


# Steps that need only what `system` installed, and nothing from each other: the broker's
# restart and the pip install overlap on a first deploy.
CONCURRENT_STEPS = ("broker", "python")


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
    result.data["interrupted"] = True
    result.notes.append(f"interrupted (Ctrl-C): {text}")
    return result


def run_step(plan: StepPlan, remote: Remote, inventory: Inventory, reporter: Reporter, host: HostSpec,
             result: HostResult, dry_run: bool, events: set[str] | None = None) -> bool:
    def say(text: str) -> None:
        reporter.line(host.name, f"{plan.name:<12} {text}")

    events = set() if events is None else events
    if dry_run:
        for action in plan.actions:
            say(f"would {action.summary}" + (" if pip installs or upgrades anything" if action.when else ""))
            for upload in action.uploads:
                if upload.diff:
                    reporter.plain(file_diff(upload.target, upload.old_content, upload.content, upload.secret))
        if not plan.changed:
            say(f"ok ({plan.noop})")
        result.ok += 1
        result.changed += plan.changed
        return True
    timer = Timer()
    layout = Layout(inventory.project)
    bounds = inventory.bounds
    quick = dict(timeout=bounds.quick, bound="bounds.quick")
    ran = 0
    groups = action_groups(plan.actions)
    try:
        for index, group in enumerate(groups):
            if STOP.is_set():
                if index:
                    result.data.setdefault("cut", []).append(
                        f"{plan.name} ({sum(len(g) for g in groups[:index])} of {len(plan.actions)} actions done)")
                result.data["interrupted"] = True
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
                seconds, bound = action_bound(bounds, plan.name, action.quick, inventory.celery.stopwaitsecs)
                out = remote.run_root(action.script, action.summary, timeout=seconds, bound=bound, progress=say)
                events.update(line[len(EVENT):].strip() for line in out.stdout.splitlines()
                              if line.startswith(EVENT))
            ran += 1
            if action.note:
                result.notes.append(action.note)
        if plan.after_success:   # bookkeeping once every action succeeded (clear_pending)
            remote.run_root(plan.after_success, f"{plan.name} (bookkeeping)", **quick)
    except Exception as exc:  # noqa: BLE001 - a host's failure is reported, never a traceback
        text = str(exc) if isinstance(exc, HostError) else f"{type(exc).__name__}: {exc}"
        say(f"failed: {text}")
        result.failed, result.error = 1, f"{plan.name}: {text.splitlines()[0]}"
        return False
    if plan.changed and not ran:
        # every action waited for an event that did not come (pip changed nothing)
        say("ok (pip changed nothing in the virtualenv: no restart needed)")
    else:
        say(f"changed ({timer})" if plan.changed else f"ok ({plan.noop})")
    result.ok += 1
    result.changed += bool(ran)
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


def file_diff(path: str, old: str | None, new: str, secret: bool) -> str:
    """A unified diff for --dry-run. Passwords in URLs are masked in every file; in a file that
    holds secrets (settings_local.py, the broker's config) only the changed lines are shown,
    with the value of any password-, secret- or token-like setting masked too."""
    lines = difflib.unified_diff(
        (old or "").splitlines(), new.splitlines(),   # a missing last newline is no change worth showing
        fromfile=f"{path} (on the host)" if old is not None else "/dev/null",
        tofile=f"{path} (after deploy)", n=0 if secret else 3, lineterm="",
    )
    text = "\n".join(lines)
    return ACL_HASH.sub("#********", mask_lines(text)) if secret else URL_PASSWORD.sub(r"\1********@", text)
