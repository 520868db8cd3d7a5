"""Facts and inventories for the step tests: a fresh server and one already deployed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tasks.configs import config_files, sha256
from tasks.deploy import plan_deploy
from tasks.erlang import RABBITMQ_ENV_CONF, RABBITMQ_ENV_INCLUDE
from tasks.inventory_load import parse_inventory
from tasks.probe import Facts, PathState
from tasks.pyenv import python_stamp, requirements
from tasks.redis_broker import REDIS_CONF, REDIS_DEFAULT_OFF, redis_include
from tasks.system import managed_paths
from tasks.target import Target

BASE = {
    "project": {"name": "my_proj", "path": "/opt/arches/my_proj", "virtualenv": "/opt/arches/venv", "user": "arches"},
    "broker": {"kind": "redis"},
    "celery": {"concurrency": 2},
    "hosts": {"prod": {"roles": ["broker", "worker", "beat"]}},
}
# The broker password a deploy is given (by tasks/fleet.py: from the environment, kept on the
# broker host, or new): every broker fabcelery manages has the project's own account.
PASSWORD = "s3cret"


def target_of(inventory, host_name: str = "prod") -> Target:
    """A host's Target (tasks/target.py), as a deploy builds it for each host."""
    return Target.of(inventory, inventory.hosts[host_name])


def inventory_data(**changes) -> dict:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def make_inventory(**changes):
    return parse_inventory(inventory_data(**changes), Path("inventory.yaml"))


def fresh_facts(**changes) -> Facts:
    """A bare Debian 13 server that holds the project code and nothing else."""
    values = dict(
        os={"id": "debian", "version_id": "13", "pretty_name": "Debian GNU/Linux 13 (trixie)"},
        hostname="prod",
        systemd=True,
        paths={"/opt/arches/my_proj/my_proj": PathState("directory", "root", "root", "755")},
        contents={"/opt/arches/my_proj/my_proj/settings_local.py": "SECRET_KEY = 'x'\n"},
    )
    values.update(changes)
    return Facts(**values)


def deployed_facts(inventory=None, host_name="prod", password=PASSWORD) -> Facts:
    """The facts a probe returns right after a successful deploy of `inventory`."""
    inventory = inventory or make_inventory()
    target = target_of(inventory, host_name)
    layout = target.layout
    facts = fresh_facts()
    # a deploy of the fresh host computes the contents we expect
    plans = plan_deploy(target, facts, password)
    uploads = {u.target: u for plan in plans for a in plan.actions for u in a.uploads}
    paths = dict(facts.paths)
    for item in managed_paths(target):
        paths[item.path] = PathState(item.kind, item.owner, item.group, item.mode)
    for spec in config_files(target):
        paths[spec.target] = PathState("file", spec.owner, spec.group, spec.mode.lstrip("0"))
    paths[inventory.project.virtualenv] = PathState("directory", "arches", "arches", "755")
    paths[layout.settings_local] = PathState("file", "root", "arches", "640")
    dists = {"celery": "5.7.0", "supervisor": "4.3.0", "kombu": "5.7.0", "redis": "8.1.0"}
    stamp = python_stamp(target, requirements(target, Facts(dists=dists)), facts)
    supervisor_status = "".join(f"{p.name:<32} RUNNING   pid {101 + i}, uptime 0:10:00\n"
                                for i, p in enumerate(target.programs))
    return Facts(
        os=facts.os,
        hostname=facts.hostname,
        systemd=True,
        packages={"python3": True, "python3-venv": True, "logrotate": True, "redis-server": True},
        users={"arches": {"name": "arches", "uid": "999", "gid": "999", "home": "/home/arches"}},
        groups={"arches": "arches:x:999:"},
        paths=paths,
        checksums={path: sha256(u.content) for path, u in uploads.items()},
        lines={(REDIS_CONF, redis_include(inventory)): True, (REDIS_CONF, REDIS_DEFAULT_OFF): True}
        if inventory.broker.kind == "redis" else {(RABBITMQ_ENV_CONF, RABBITMQ_ENV_INCLUDE): True},
        contents={layout.settings_local: uploads[layout.settings_local].content,
                  layout.python_stamp: stamp, layout.unit_file: uploads[layout.unit_file].content},
        listings={layout.pool_conf_glob: tuple(sorted(
            p.config for p in target.programs if p.config.startswith(f"{layout.celeryd_conf[:-5]}-")))},
        services={"redis-server.service": {"enabled": "enabled", "active": "active"},
                  layout.unit_name: {"enabled": "enabled", "active": "active"}},
        venv_python=True,
        dists=dists,
        supervisord_running=True,
        supervisor_status=supervisor_status,
        redis_ping="PONG",
    )


@pytest.fixture
def inventory():
    return make_inventory()


def probe_output(**found: str) -> str:
    """What the probe prints (tasks/runner.py's sections) for these findings, each one's text."""
    import base64

    lines = [f"@@{name} 0 {base64.b64encode(text.encode()).decode()}" for name, text in found.items()]
    return "\n".join([*lines, "@@end 0 ", ""])
