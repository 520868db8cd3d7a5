"""The system step: OS packages, the project user and group, and the directories
and log files the programs need, with the right owner and mode, and no upload left by a
deploy that was cut off; declared as resources (tasks/resources.py) and planned by its differ."""

from __future__ import annotations

from dataclasses import dataclass

from .inventory import HostSpec, Inventory
from .plan import StepName, StepPlan
from .probe import Facts, ProbeSpec, union_of
from .remote import STALE_UPLOAD_MINUTES, UPLOAD_PREFIX
from .resources import plan_resources
from .resources_files import Directory, File, LeftoverUploads
from .resources_os import Group, Packages, User
from .target import Target


@dataclass(frozen=True)
class Managed:
    path: str
    kind: str      # "directory" | "file"
    owner: str
    group: str
    mode: str      # octal without leading zero, as stat prints it
    # a directory others keep files in too (Debian's packages, other projects): an undeploy
    # removes it only once it is empty
    shared: bool = False
    broker: bool = False   # the broker's own: an undeploy removes it with the broker's node files


LEFTOVER_UPLOADS = LeftoverUploads(UPLOAD_PREFIX, STALE_UPLOAD_MINUTES)


def managed_paths(target: Target, any_role: bool = False) -> list[Managed]:
    """The directories and log files the system step makes. `any_role`: also those a deploy
    makes under other roles of the host's (beat's state), for an undeploy."""
    layout = target.layout
    user, group = target.inventory.project.user, target.inventory.project.group
    broker_paths = []
    if target.manages_broker:
        broker_paths += [Managed(path, "directory", "root", "root", "755", shared=True, broker=True)
                         for path in target.broker.system_dirs]
    if not runs_celery(target.host):
        return [Managed(layout.fabcelery_dir, "directory", "root", "root", "755"), *broker_paths]
    paths = [*broker_paths,
        Managed("/etc/supervisor", "directory", "root", "root", "755", shared=True),
        # the programs' files, which only the project's supervisord includes (never conf.d)
        Managed(layout.programs_dir, "directory", "root", "root", "755"),
        Managed("/var/log/supervisor", "directory", "root", "root", "755", shared=True),
        Managed(layout.fabcelery_dir, "directory", "root", "root", "755"),
    ]
    # supervisord runs as the project user: its log is that user's, in a directory of root's
    paths.append(Managed(layout.supervisord_log, "file", user, group, "640"))
    if target.host.has("worker") or target.host.has("beat"):
        paths.append(Managed("/var/log/celery", "directory", "root", "root", "755", shared=True))
    # supervisord's socket and pid file, beat's pid file: made here (supervisor's parser wants
    # the directory when it checks a new config) and by the unit's RuntimeDirectory= at boot
    paths += [Managed(path, "directory", user, group, "750") for path in layout.run_dirs]
    # beat's schedule; the watchdog's state (celery.watchdog, tasks/watchdog.py)
    if any_role or target.host.has("beat") or (target.inventory.celery.watchdog is not None
                                               and target.host.has("worker")):
        paths.append(Managed(layout.state_dir, "directory", user, group, "750"))
    # every program's log, created beforehand with its owner: in /var/log/celery, which only root may write
    paths += [Managed(program.log, "file", user, group, "640") for program in target.programs]
    return paths


def required_packages(target: Target, facts: Facts) -> list[str]:
    # python3 everywhere: root's own scripts run with the system's Python (tasks/scripts/)
    packages = ["python3"]
    if runs_celery(target.host) and not facts.venv_python:
        packages.append("python3-venv")
    if runs_celery(target.host):
        packages.append("logrotate")   # /etc/logrotate.d/fabcelery-NAME rotates the programs' logs
    if target.manages_broker:
        packages.append(target.broker.name)
    return packages


# every package a step may install or look at: probed once, whatever this host needs
# (supervisor: Debian's, whose /etc/supervisor/conf.d an undeploy leaves in place)
PACKAGES = ("python3", "python3-venv", "logrotate", "redis-server", "rabbitmq-server", "supervisor")


def system_needs(target: Target) -> ProbeSpec:
    """What the system step needs to know of a host (which packages a host needs depends on
    its facts, so the probe asks for all that any host may need)."""
    return union_of([ProbeSpec(paths=tuple(m.path for m in managed_paths(target)), packages=PACKAGES,
                               users=(target.inventory.project.user,), groups=(target.inventory.project.group,)),
                     LEFTOVER_UPLOADS.needs()])


def system_resources(target: Target, facts: Facts) -> list:
    """What the system step owns on this host: the packages, the project user and group,
    the directories and log files, and the uploads of deploys cut off, absent (tasks/resources.py)."""
    user, group = target.inventory.project.user, target.inventory.project.group
    wanted: list = [Packages(tuple(required_packages(target, facts)), apt_lock=target.inventory.bounds.apt_lock,
                             record=target.layout.installed_packages)]
    if runs_celery(target.host):
        wanted += [Group(group), User(user, group, f"/home/{user}")]
    for item in managed_paths(target):
        kind = Directory if item.kind == "directory" else File
        wanted.append(kind(item.path, item.owner, item.group, item.mode))
    wanted.append(LEFTOVER_UPLOADS)
    return wanted


def plan_system(target: Target, facts: Facts) -> StepPlan:
    noop = (f"user {target.inventory.project.user}, directories and log files as they should be"
            if runs_celery(target.host) else "packages and directories as they should be")
    return plan_resources(StepName.SYSTEM, system_resources(target, facts), facts, noop)


def system_absent(target: Target, also_files: list[str], also_shared: list[str], broker_dirs_go: bool) -> list:
    """An undeploy's part of the system step: its directories and log files (under every role
    of the host's), absent; with `also_files` (what others wrote in them: rotated logs, fab
    status's history) and `also_shared` (directories others may keep files in). Files go first,
    then the directories; a shared one only once it is empty, and before the one it is in. The
    broker's directories go only with its node files (`broker_dirs_go`)."""
    managed = [m for m in managed_paths(target, any_role=True) if broker_dirs_go or not m.broker]
    files = dict.fromkeys([*(m.path for m in managed if m.kind == "file"), *also_files])
    own = [m.path for m in managed if m.kind == "directory" and not m.shared]
    shared = sorted([*also_shared, *(m.path for m in managed if m.kind == "directory" and m.shared)],
                    key=lambda path: -path.count("/"))
    return [*(File(path, present=False) for path in files), *(Directory(path, present=False) for path in own),
            *(Directory(path, present=False, shared=True) for path in dict.fromkeys(shared))]


def runs_celery(host: HostSpec) -> bool:
    """A host with no celery program (a broker-only host) needs no user, virtualenv or supervisord."""
    return host.has("worker") or host.has("beat")


def user_home(inventory: Inventory, facts: Facts) -> str:
    """The project user's home: as the server has it, or the one we create."""
    user = inventory.project.user
    return facts.users.get(user, {}).get("home") or f"/home/{user}"
