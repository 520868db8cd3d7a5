"""The deploy's decisions, per host: the probe it asks for, then every step's plan from the facts
(pure; tasks/apply.py runs them)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .appcheck import with_app_check
from .broker import broker_needs, broker_url, fragment_context, plan_broker, rabbitmq_node_files
from .broker_host import broker_for, needs_password
from .celery_policy import celery_problem
from .configs import (
    TEMPLATES,
    TemplateError,
    config_files,
    configs_needs,
    legacy_changes,
    plan_configs,
    render,
    template_context,
)
from .erlang import node_context
from .inventory import InventoryError
from .job import Job
from .plan import Action, Effect, Event, StepName, StepPlan, fail
from .probe import Facts, ProbeSpec, union_of
from .programs import program_of_config
from .pyenv import plan_python, python_needs
from .rabbitmq_cluster import cluster_hosts
from .redis_broker import redis_auth_env
from .resources import plan_resources
from .resources_python import PENDING_VENV
from .shared_redis import shared_redis_problem, survey_needs
from .shell import cmd
from .supervisor import parse_status, plan_supervisord, plan_verify, supervisorctl, supervisord_needs
from .system import plan_system, runs_celery, system_needs, user_home
from .target import Target
from .undeploy import retired_needs, retired_programs
from .watchdog import plan_watchdog, watchdog_needs, with_watchdog

TEMPLATES_ENV = "FABCELERY_TEMPLATES"


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


def pending_targets(target: Target, facts: Facts) -> list[str]:
    text = facts.contents.get(target.layout.pending_apply) or ""
    return [line for line in text.splitlines() if line.startswith("/")]


def with_pending(target: Target, configs: StepPlan, pending: list[str]) -> StepPlan:
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
    programs = {f.target: f.programs for f in config_files(target)}
    # a recorded program file that this host should not have (any more): a removal to apply
    removed = [t for t in pending if t not in programs and program_of_config(target.layout, t)]
    # a file moved out of conf.d: Debian's supervisord may still have to drop it (supervisord step)
    moved_out, legacy_removed = legacy_changes(target, pending)
    layout = target.layout
    record = "\n".join([
        # the virtualenv's line (with_venv_restart) stays: it is applied by the same step
        "{ " + cmd("grep", "-sx", PENDING_VENV, target.layout.pending_apply) + " || :; "
        + cmd("printf", "%s\\n", *changed) + "; } > " + cmd(target.layout.pending_apply + ".new"),
        cmd("mv", "-f", target.layout.pending_apply + ".new", target.layout.pending_apply),
    ])
    changes = replace(
        changes,
        changed=tuple(changed),
        changed_programs=tuple(sorted({*changes.changed_programs,
                                       *(p for path in pending for p in programs.get(path, ()))})),
        removed=tuple(sorted({*changes.removed, *removed})),
        removed_programs=tuple(sorted({*changes.removed_programs,
                                       *(program_of_config(target.layout, t) for t in removed), *legacy_removed})),
        # the unit was installed, supervisord maybe not restarted: restart it (what changed is not known)
        unit_restart=(changes.unit_restart and layout.unit_file in changes.changed) or layout.unit_file in pending,
        main_restart=((changes.main_restart and layout.supervisord_conf in changes.changed)
                      or layout.supervisord_conf in pending),
        moved_out=tuple(sorted({*changes.moved_out, *moved_out})),
    )
    # every other change of the step (a removal) records it before it runs
    actions = tuple(replace(a, script=record + "\n" + a.script) if a.script and not a.uploads else a
                    for a in configs.actions)
    # record: run by the install script between validation and renames
    return replace(configs, actions=actions, configs=changes, record_pending=record)


# kombu before 5.4 can stop taking tasks after Redis restarted (kombu#2007, fixed in 5.4.0):
# seen on test servers with celery 5.3.6 (Arches' pin) and kombu 5.3.7
KOMBU_RESUMES_AFTER_REDIS_RESTART = (5, 4)


def restart_after_redis(target: Target, facts: Facts, broker: StepPlan, configs: StepPlan,
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
    if any(a.effect == Effect.SUPERVISORD_STARTS for a in supervisord.actions):
        return supervisord   # every program starts anew
    layout = target.layout
    changed = set(configs.configs.changed)
    restarted = set(configs.configs.changed_programs)
    programs = [p.name for p in target.programs]
    if layout.settings_local in changed:
        restarted |= set(programs)
    others = [p for p in programs if p not in restarted]
    if not others:
        return supervisord
    action = Action(f"restart {', '.join(others)} (Redis restarted; kombu {version or '?'} may not resume "
                    "consuming: kombu#2007)", supervisorctl(layout, "restart", *others))
    return replace(supervisord, actions=(*supervisord.actions, action))


def clear_pending(target: Target, supervisord: StepPlan, configs: StepPlan,
                  python: StepPlan | None = None) -> StepPlan:
    """Once supervisord has applied the changes, forget them (see run_step's `after_success`)."""
    if not configs.configs.changed and not (python and python.changed) and not supervisord.venv_restart:
        return supervisord
    return replace(supervisord, after_success=cmd("rm", "-f", target.layout.pending_apply))


def pending_venv(target: Target, facts: Facts) -> bool:
    text = facts.contents.get(target.layout.pending_apply) or ""
    return PENDING_VENV in text.splitlines()


def with_venv_restart(target: Target, facts: Facts, python: StepPlan, configs: StepPlan,
                      supervisord: StepPlan) -> StepPlan:
    """The supervisord step, with a graceful restart of the programs that run from the virtualenv
    when pip changed it: once, and only of the programs that the step does not (re)start anyway.

    Decided from the facts: if pip runs, the restart is planned to happen only if pip installed
    or upgraded something (Action.when); if an earlier deploy changed the virtualenv and did not
    get to restart them (the pending record says so), it happens unconditionally.
    """
    layout = target.layout
    earlier = pending_venv(target, facts)
    programs = [p.name for p in target.programs]
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
                    when=None if earlier else Event.VENV_CHANGED,
                    note=f"restarted {', '.join(running)}: {why}")
    return replace(supervisord, actions=(*supervisord.actions, action), venv_restart=True)


def probe_spec(target: Target, with_contents: bool = False) -> ProbeSpec:
    """The deploy's one probe: the union of what each step needs to know (with contents:
    the files' text too, for --dry-run's diffs)."""
    project = target.inventory.project
    own = ProbeSpec(
        # preflight: the project's code is there, and not behind a link
        paths=(f"{project.path}/{project.name}",),
        contents=(target.layout.pending_apply,),
        redis_auth=redis_auth_env(target.inventory),
    )
    # a host that runs no program: what an earlier deploy may have left running there (retired_programs)
    retired = [] if runs_celery(target.host) else [retired_needs(target)]
    return union_of([system_needs(target), python_needs(target), own, *retired,
                     configs_needs(target, with_contents), broker_needs(target, with_contents),
                     supervisord_needs(target), survey_needs(target),
                     watchdog_needs(target, with_contents)])


def preflight(target: Target, facts: Facts) -> StepPlan | None:
    """Problems that must stop the deploy before anything on the host changes."""
    os_ids = {facts.os.get("id", "")} | set(facts.os.get("id_like", "").split())
    if not os_ids & {"debian", "ubuntu"}:
        name = facts.os.get("pretty_name") or facts.os.get("id") or "an unknown system"
        return fail(StepName.PREFLIGHT, f"the host runs {name}; fabcelery deploys to Debian and Ubuntu only")
    package_dir = f"{target.inventory.project.path}/{target.inventory.project.name}"
    state = facts.paths.get(package_dir)
    if runs_celery(target.host) and state is not None and state.kind == "link":
        return fail(StepName.PREFLIGHT, f"{package_dir} is a symbolic link: fabcelery writes settings_local.py there "
                                 "and never through a link; point project.path at the real directory")
    if runs_celery(target.host) and (state is None or state.kind != "directory"):
        return fail(
            StepName.PREFLIGHT,
            f"{package_dir} is not there: put the project's code at project.path "
            f"({target.inventory.project.path}) first; fabcelery deploys its Celery side, not the code",
        )
    if problem := celery_problem(target, facts):
        return fail(StepName.PREFLIGHT, problem)
    if problem := shared_redis_problem(target, facts):
        return fail(StepName.PREFLIGHT, problem)
    return None


# the steps of plan_deploy, in order: what a deploy stopped at its probe had not started
DEPLOY_STEPS = (StepName.SYSTEM, StepName.BROKER, StepName.PYTHON, StepName.CONFIGS, StepName.SUPERVISORD,
                StepName.VERIFY)


def deploy_job(target: Target) -> Job:
    """`fab deploy` on the target's host, for the runner (tasks/apply.py)."""
    return Job("deploy", lambda with_contents: probe_spec(target, with_contents=with_contents),
               lambda facts, values: plan_deploy(target, facts, values.get("password"), cookie=values.get("cookie")),
               DEPLOY_STEPS)


def plan_deploy(target: Target, facts: Facts, password: str | None = None,
                templates: list[Path] | None = None, cookie: str | None = None) -> list[StepPlan]:
    """Every step's decision, from the probe's facts (and the fleet's broker password and, for a
    RabbitMQ cluster, its Erlang cookie) alone."""
    templates = templates or template_dirs()
    problem = preflight(target, facts)
    if problem:
        return [problem]
    home = user_home(target.inventory, facts)
    local_broker = target.broker.unit if target.manages_broker else None
    context = template_context(target, facts, home, broker_url(target, password), local_broker)
    # a RabbitMQ cluster: Celery declares its queues as quorum queues (settings_local.block.j2)
    context["quorum_queues"] = bool(cluster_hosts(target.inventory))
    system = plan_system(target, facts)
    broker_fragment, node_files = "", ()
    if target.manages_broker:
        broker = broker_for(target.inventory, target.host)
        if needs_password(target.inventory, broker) and not password:
            return [fail(StepName.BROKER, "no broker password was given (the project's own account needs one)")]
        context.update(fragment_context(target, broker, password))
        try:
            broker_fragment = render(target.broker.fragment()[1], context, templates)
            if files := rabbitmq_node_files(target):
                node = {**context, **node_context(target.inventory, target.host, facts.hostname)}
                node_files = tuple((f, render(f.template, node, templates)) for f in files)
        except TemplateError as exc:
            return [fail(StepName.BROKER, str(exc))]
    broker = plan_broker(target, facts, password, broker_fragment, node_files, cookie)
    python = plan_python(target, facts, home)
    if runs_celery(target.host):
        configs = with_pending(target, plan_configs(target, facts, context, templates),
                               pending_targets(target, facts))
    else:
        configs = plan_resources(StepName.CONFIGS, retired_programs(target, facts), facts,
                                 "no celery programs on this host")
    # the watchdog's files and timer (celery.watchdog), or their removal: after the configs' own
    configs = with_watchdog(configs, plan_watchdog(target, facts, context, templates))
    supervisord = with_venv_restart(target, facts, python, configs,
                                    plan_supervisord(target, facts, configs))
    supervisord = restart_after_redis(target, facts, broker, configs, supervisord)
    supervisord = clear_pending(target, supervisord, configs, python)
    # the app must see the block's settings before anything starts or restarts (tasks/appcheck.py)
    venv_changes = True if pending_venv(target, facts) else Event.VENV_CHANGED if python.changed else False
    supervisord = with_app_check(target, home, context, supervisord, bool(configs.configs.changed),
                                 venv_changes)
    steps = [system, broker, python, configs, supervisord]
    anything = any(step.changed for step in steps)
    return steps + [plan_verify(target, facts, home, anything)]
