"""The deploy's decisions, per host: the probe it asks for, then every step's plan from the facts
(pure; tasks/apply.py runs them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .broker import broker_needs, broker_url, plan_broker
from .celery_policy import celery_problem
from .configs import (
    configs_needs,
    plan_configs,
    program_files_absent,
    template_context,
)
from .follow_ups import Planned, follow_up
from .job import Job
from .plan import StepName, StepPlan, fail
from .probe import Facts, ProbeSpec, union_of
from .pyenv import plan_python, python_needs
from .rabbitmq_cluster import cluster_hosts
from .redis_broker import redis_auth_env
from .rendering import template_dirs
from .resources import needs_of, plan_resources
from .shared_redis import shared_redis_problem, survey_needs
from .supervisor import plan_supervisord, plan_verify, supervisord_absent, supervisord_needs
from .system import plan_system, runs_celery, system_needs, user_home
from .target import Target
from .watchdog import plan_watchdog, watchdog_needs, with_watchdog


def preflight_needs(target: Target) -> ProbeSpec:
    """What preflight decides from: the project's code is there, and not behind a link; a Redis
    that serves others (tasks/shared_redis.py)."""
    project = target.inventory.project
    return ProbeSpec(paths=(f"{project.path}/{project.name}",)).union(survey_needs(target))


def probe_spec(target: Target, with_contents: bool = False) -> ProbeSpec:
    """The deploy's one probe: the union of what preflight and each step need to know (with
    contents: the files' text too, for --dry-run's diffs)."""
    # how redis-cli logs in as the project, for the facts that ask Redis
    login = ProbeSpec(redis_auth=redis_auth_env(target.inventory))
    return union_of([preflight_needs(target), login, *(step.needs(target, with_contents) for step in STEPS)])


def retired_programs(target: Target, facts: Facts) -> list:
    """A deploy to a host that runs no celery program any more (its worker and beat roles
    moved elsewhere): what an earlier deploy left running there goes, so that no worker keeps
    taking tasks on a host the inventory gives none. Its supervisord is stopped (a warm
    shutdown), its unit and files removed. The virtualenv, the logs and fabcelery's block of
    settings_local.py stay (the project's own processes there may send tasks with it):
    `fab undeploy` removes those. On a host that never ran programs, every resource is a no-op."""
    return [*supervisord_absent(target, facts), *program_files_absent(target, facts)]


def retired_needs(target: Target) -> ProbeSpec:
    """What retired_programs decides from: its resources' needs, and the listing of the pool
    files in which stray_files finds those the inventory no longer names."""
    return needs_of(retired_programs(target, Facts())).union(ProbeSpec(listings=(target.layout.pool_conf_glob,)))


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


@dataclass(frozen=True)
class DeployStep:
    """A step of the deploy: its part of the one probe (with the files' contents: for --dry-run's
    diffs), and its plan from what plan_deploy worked out and the steps before it (Planned)."""

    name: StepName
    needs: Callable[[Target, bool], ProbeSpec]
    plan: Callable[[Planned], StepPlan]


def configs_step_needs(target: Target, with_contents: bool) -> ProbeSpec:
    # a host that runs no program: what an earlier deploy may have left running there (retired_programs)
    retired = [] if runs_celery(target.host) else [retired_needs(target)]
    # what an earlier deploy cut off installed and supervisord did not apply (with_pending, follow-ups)
    pending = ProbeSpec(contents=(target.layout.pending_apply,))
    return union_of([*retired, pending, configs_needs(target, with_contents), watchdog_needs(target, with_contents)])


def plan_configs_step(planned: Planned) -> StepPlan:
    target, facts = planned.target, planned.facts
    if runs_celery(target.host):
        configs = plan_configs(target, facts, planned.context, planned.templates)
    else:
        configs = plan_resources(StepName.CONFIGS, retired_programs(target, facts), facts,
                                 "no celery programs on this host")
    # the watchdog's files and timer (celery.watchdog), or their removal: after the configs' own
    return with_watchdog(configs, plan_watchdog(target, facts, planned.context, planned.templates))


# the deploy's steps, in the order they run; then the follow-ups (tasks/follow_ups.py) and verify
STEPS = (
    DeployStep(StepName.SYSTEM, lambda target, _contents: system_needs(target),
               lambda p: plan_system(p.target, p.facts)),
    DeployStep(StepName.BROKER, broker_needs,
               lambda p: plan_broker(p.target, p.facts, p.context, p.templates, p.password, p.cookie)),
    DeployStep(StepName.PYTHON, lambda target, _contents: python_needs(target),
               lambda p: plan_python(p.target, p.facts, p.home)),
    DeployStep(StepName.CONFIGS, configs_step_needs, plan_configs_step),
    DeployStep(StepName.SUPERVISORD, lambda target, _contents: supervisord_needs(target),
               lambda p: plan_supervisord(p.target, p.facts, p.steps[StepName.CONFIGS])),
)
# what a deploy stopped at its probe had not started
DEPLOY_STEPS = (*(step.name for step in STEPS), StepName.VERIFY)


def deploy_job(target: Target) -> Job:
    """`fab deploy` on the target's host, for the runner (tasks/apply.py)."""
    return Job("deploy", lambda with_contents: probe_spec(target, with_contents=with_contents),
               lambda facts, values: plan_deploy(target, facts, values.get("password"), cookie=values.get("cookie")),
               DEPLOY_STEPS)


def plan_deploy(target: Target, facts: Facts, password: str | None = None,
                templates: list[Path] | None = None, cookie: str | None = None) -> list[StepPlan]:
    """Every step's decision (STEPS, in order; then the follow-ups and verify), from the probe's
    facts (and the fleet's broker password and, for a RabbitMQ cluster, its Erlang cookie)
    alone. A step that cannot be planned is the deploy's failure alone."""
    problem = preflight(target, facts)
    if problem:
        return [problem]
    home = user_home(target.inventory, facts)
    local_broker = target.broker.unit if target.manages_broker else None
    context = template_context(target, facts, home, broker_url(target, password), local_broker)
    # a RabbitMQ cluster: Celery declares its queues as quorum queues (settings_local.block.j2)
    context["quorum_queues"] = bool(cluster_hosts(target.inventory))
    planned = Planned(target, facts, {}, home, context, templates or template_dirs(), password, cookie)
    for step in STEPS:
        plan = step.plan(planned)
        if plan.error:
            return [plan]     # nothing runs (tasks/apply.py): the deploy is this step's failure
        planned.steps[step.name] = plan
    followed = follow_up(planned)
    steps = [followed[step.name] for step in STEPS]
    anything = any(step.changed for step in steps)
    return steps + [plan_verify(target, facts, home, anything)]
