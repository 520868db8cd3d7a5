"""`fab undeploy`: everything a deploy put on a host, declared absent (tasks/resources.py).

In order, per host: the watchdog's timer, service and files (celery.watchdog), the program
files an earlier fabcelery kept in /etc/supervisor/conf.d
(and the programs that Debian's root supervisord loaded from there), supervisord's unit
(stopped: a warm shutdown of every program),
the config files and fabcelery's block of settings_local.py, the broker's account and
its config (Redis restarted without it), with --purge the packages fabcelery installed
and the virtualenv if fabcelery created it, then the log files and fabcelery's own
directories. Never the project's code, the rest of settings_local.py, the project user,
or anything fabcelery did not make; what other projects on the host still use (Redis's
`user default off`, RabbitMQ's node files) stays while one of them is there.
"""

from __future__ import annotations

from dataclasses import dataclass

from .configs import BEGIN_MARKER, END_MARKER, program_files_absent
from .file_edits import ManagedBlock
from .job import Job
from .layout import LEGACY_PROGRAMS_DIR
from .plan import Action, StepName, StepPlan
from .probe import Facts, ProbeSpec
from .rabbitmq_broker import RABBITMQ_UNIT
from .redis_broker import (
    REDIS_FRAGMENTS,
    REDIS_UNIT,
)
from .resources import Custom, doing, needs_of, nothing, plan_resources
from .resources_os import Packages
from .resources_python import Virtualenv
from .shell import cmd
from .supervisor import supervisord_absent
from .system import PACKAGES, runs_celery, system_absent
from .target import Target
from .watchdog import watchdog_resources

FABCELERY_ROOT = "/var/lib/fabcelery"


@dataclass(frozen=True)
class Step:
    name: StepName
    resources: tuple
    noop: str


def other_projects(target: Target, facts: Facts) -> list[str]:
    return [name for name in facts.subdirs.get(FABCELERY_ROOT, ()) if name != target.inventory.project.name]


def owned(target: Target, facts: Facts, purge: bool) -> list[Step]:
    """What fabcelery put on this host, each resource absent, step by step in the order
    they go."""
    layout = target.layout
    project = target.inventory.project
    steps: list[Step] = []
    if runs_celery(target.host):
        # the watchdog's timer first (tasks/watchdog.py): nothing restarts a program meanwhile
        steps.append(Step(StepName.SUPERVISORD, (*watchdog_resources(target, None),
                                                 *supervisord_absent(target, facts)),
                          f"{layout.unit_name} is not there"))
        steps.append(Step(StepName.CONFIGS, tuple(program_files_absent(target, facts))
                          + (ManagedBlock(layout.settings_local, BEGIN_MARKER, END_MARKER),),
                          "no config file of fabcelery's is left"))
    node_files_go = False
    if target.manages_broker:
        # the project's account and config on its broker (the strategy's); whether RabbitMQ's node files go too
        others = bool(other_projects(target, facts))
        broker, node_files_go = target.broker.undeploy_resources(target.host, facts, purge, others)
        steps.append(Step(StepName.BROKER, tuple(broker), "no account or config of the project's is left"))
    if purge:
        steps.append(Step(StepName.PURGE, tuple(purge_resources(target, facts)),
                          "nothing that fabcelery installed is left"))
    files: list[str] = []
    shared = [FABCELERY_ROOT]
    if runs_celery(target.host):
        # what logrotate made of the logs (NAME-worker.log.1, .2.gz, ...)
        files += [path for glob in log_globs(target) for path in facts.listings.get(glob, ())]
        # conf.d: made by an earlier fabcelery, unless Debian's supervisor package has it; the
        # parent of the state directory, which `install -d` made
        legacy = [] if facts.installed("supervisor") else [LEGACY_PROGRAMS_DIR]
        shared += [*legacy, "/var/lib/celery"]
    # the stall rule's history, kept by fab status (tasks/scripts/stall_rule.py)
    files += [f"{layout.fabcelery_dir}/stall-state.json", f"{layout.fabcelery_dir}/stall-state.json.new"]
    steps.append(Step(StepName.SYSTEM, tuple(system_absent(target, files, shared, node_files_go)),
                      f"no file or directory of {project.name}'s is left"))
    return steps


def log_globs(target: Target) -> tuple[tuple[str, str], ...]:
    name = target.inventory.project.name
    return (("/var/log/celery", f"{name}-*.log*"), ("/var/log/supervisor", f"{name}-supervisord.log*"))


def purge_resources(target: Target, facts: Facts) -> list:
    """--purge: the packages a deploy installed (its record), and the virtualenv if a deploy
    created it (emptied as its owner, so root never walks a tree the project user can change)."""
    layout = target.layout
    resources: list = []
    record = facts.contents.get(layout.installed_packages) or ""
    names = tuple(dict.fromkeys(line.strip() for line in record.splitlines() if line.strip()))
    # the broker stopped first, under fabcelery's bound, not only by the package's own scripts
    services = {"redis-server": REDIS_UNIT, "rabbitmq-server": RABBITMQ_UNIT}

    def stop_brokers(facts: Facts) -> object:
        units = [services[name] for name in names if name in services and facts.installed(name)]
        if not units or not facts.systemd:
            return nothing("no broker of fabcelery's to stop")
        return doing(Action(f"stop {', '.join(units)} before the package goes",
                            cmd("systemctl", "stop", *units)))
    resources.append(Custom("brokers stopped", decide=stop_brokers, present=False))
    resources.append(Packages(names, present=False, apt_lock=target.inventory.bounds.apt_lock))
    if runs_celery(target.host):
        resources.append(Virtualenv(target.inventory.project.virtualenv, record=layout.created_virtualenv,
                                    present=False))
    return resources


def undeploy_spec(target: Target) -> ProbeSpec:
    """The probe of an undeploy: what every resource needs (declared for a host that has all
    of them), and what decides which resources there are."""
    layout = target.layout
    every = [r for step in owned(target, Facts(), purge=True) for r in step.resources]
    extra = ProbeSpec(
        packages=PACKAGES,
        contents=(layout.installed_packages, layout.created_virtualenv),
        services=(layout.unit_name,),
        supervisord_pidfile=layout.supervisord_pid,
        listings=((layout.pool_conf_glob, *log_globs(target)) if runs_celery(target.host) else ()) + (REDIS_FRAGMENTS,),
        subdirs=(FABCELERY_ROOT,),
    )
    return needs_of(every).union(extra)


def undeploy_job(target: Target, purge: bool) -> Job:
    """`fab undeploy` on the target's host, for the runner (tasks/apply.py): its own probe (the
    same with or without --dry-run), and its plans, which need none of the fleet's values."""
    return Job("undeploy", lambda _with_contents: undeploy_spec(target),
               lambda facts, _values: plan_undeploy(target, facts, purge), ("every step",))


def plan_undeploy(target: Target, facts: Facts, purge: bool = False) -> list[StepPlan]:
    steps = owned(target, facts, purge)
    return [plan_resources(step.name, step.resources, facts, step.noop) for step in steps]

