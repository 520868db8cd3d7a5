"""The system step: OS packages, the project user and group, and the directories
and log files the programs need, with the right owner and mode."""

from __future__ import annotations

from dataclasses import dataclass

from .apt import install_script
from .inventory import HostSpec, Inventory
from .layout import Layout
from .plan import Action, StepPlan, change, fail, ok
from .probe import Facts
from .programs import programs_for
from .scripts import set_owner_mode
from .shell import cmd


@dataclass(frozen=True)
class Managed:
    path: str
    kind: str      # "directory" | "file"
    owner: str
    group: str
    mode: str      # octal without leading zero, as stat prints it


def managed_paths(inventory: Inventory, host: HostSpec) -> list[Managed]:
    layout = Layout(inventory.project)
    user, group = inventory.project.user, inventory.project.group
    broker_paths = []
    if host.has("broker") and not inventory.broker.url and inventory.broker.kind == "rabbitmq":
        broker_paths += [Managed("/etc/rabbitmq/conf.d", "directory", "root", "root", "755"),
                         # for the drop-in that puts epmd on loopback (tasks/broker.py EPMD_DROPIN)
                         Managed("/etc/systemd/system/epmd.socket.d", "directory", "root", "root", "755")]
    if not runs_celery(host):
        return [Managed(layout.fabcelery_dir, "directory", "root", "root", "755"), *broker_paths]
    paths = [*broker_paths,
        Managed("/etc/supervisor", "directory", "root", "root", "755"),
        Managed("/etc/supervisor/conf.d", "directory", "root", "root", "755"),
        Managed("/var/log/supervisor", "directory", "root", "root", "755"),
        Managed(layout.fabcelery_dir, "directory", "root", "root", "755"),
    ]
    # supervisord runs as the project user: its log is that user's, in a directory of root's
    paths.append(Managed(layout.supervisord_log, "file", user, group, "640"))
    if host.has("worker") or host.has("beat"):
        paths.append(Managed("/var/log/celery", "directory", "root", "root", "755"))
    # supervisord's socket and pid file, beat's pid file: made here (supervisor's parser wants
    # the directory when it checks a new config) and by the unit's RuntimeDirectory= at boot
    paths += [Managed(path, "directory", user, group, "750") for path in layout.run_dirs]
    if host.has("beat"):
        paths.append(Managed(layout.state_dir, "directory", user, group, "750"))
    # every program's log, created beforehand with its owner: in /var/log/celery, which only root may write
    paths += [Managed(program.log, "file", user, group, "640") for program in programs_for(inventory, host)]
    return paths


def required_packages(inventory: Inventory, host: HostSpec, facts: Facts) -> list[str]:
    # python3 everywhere: root's own scripts run with the system's Python (tasks/scripts/)
    packages = ["python3"]
    if runs_celery(host) and not facts.venv_python:
        packages.append("python3-venv")
    if runs_celery(host):
        packages.append("logrotate")   # /etc/logrotate.d/fabcelery-NAME rotates the programs' logs
    if host.has("broker") and not inventory.broker.url:
        packages.append("redis-server" if inventory.broker.kind == "redis" else "rabbitmq-server")
    return packages


def plan_system(inventory: Inventory, host: HostSpec, facts: Facts) -> StepPlan:
    actions = []
    missing = [p for p in required_packages(inventory, host, facts) if not facts.installed(p)]
    if missing:
        # One apt transaction for everything: apt's start-up and lists dominate its cost.
        # apt waits (bounded) for its lock: unattended-upgrades may hold it (tasks/apt.py)
        actions.append(Action(f"install {', '.join(missing)}",
                              install_script(missing, inventory.bounds.apt_lock)))

    user, group = inventory.project.user, inventory.project.group
    if runs_celery(host) and group not in facts.groups:
        actions.append(Action(f"create group {group}", cmd("groupadd", "--system", group), quick=True))
    if runs_celery(host) and user not in facts.users:
        actions.append(Action(
            f"create user {user}",
            cmd("useradd", "--system", "--gid", group, "--home-dir", f"/home/{user}", "--create-home",
                "--shell", "/usr/sbin/nologin", user),
            quick=True,
        ))

    for item in managed_paths(inventory, host):
        state = facts.paths.get(item.path)
        if state is not None and state.kind != item.kind:
            what = "a symbolic link" if state.kind == "link" else f"not a {item.kind}"
            return fail("system", f"{item.path} is {what}: fabcelery never follows a link or replaces what it "
                                  f"did not make; remove it, and the next deploy creates the {item.kind}")
        if state is None:
            if item.kind == "directory":
                script = cmd("install", "-d", "-o", item.owner, "-g", item.group, "-m", item.mode, item.path)
            else:
                script = cmd("install", "-D", "-o", item.owner, "-g", item.group, "-m", item.mode,
                             "/dev/null", item.path)
            actions.append(Action(f"create {item.path}", script, quick=True))
        elif (state.owner, state.group, state.mode) != (item.owner, item.group, item.mode):
            actions.append(Action(
                f"fix owner/mode of {item.path} ({state.owner}:{state.group} {state.mode} -> "
                f"{item.owner}:{item.group} {item.mode})",
                set_owner_mode(item.path, item.owner, item.group, item.mode, item.kind),
                quick=True,
            ))
    if not actions:
        if not runs_celery(host):
            return ok("system", "packages and directories as they should be")
        return ok("system", f"user {user}, directories and log files as they should be")
    return change("system", *actions)


def runs_celery(host: HostSpec) -> bool:
    """A host with no celery program (a broker-only host) needs no user, virtualenv or supervisord."""
    return host.has("worker") or host.has("beat")


def user_home(inventory: Inventory, facts: Facts) -> str:
    """The project user's home: as the server has it, or the one we create."""
    user = inventory.project.user
    return facts.users.get(user, {}).get("home") or f"/home/{user}"
