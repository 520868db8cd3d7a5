"""Real test servers for the integration tests: podman containers that boot systemd
and run sshd, reached over SSH exactly as production is (see testhost/).

The tests drive the hosts only through `fab` (a subprocess, as a user runs it) and
check them independently with testinfra over `podman exec`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
import yaml

from testhost.harness import CommandFailed, Fleet, cleanup_stale, ensure_images

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "demo_proj"
SUITES = {"bookworm": "deb12", "trixie": "deb13"}
RECAP = re.compile(r"^(?P<host>\S+)\s+ok=(?P<ok>\d+) changed=(?P<changed>\d+) failed=(?P<failed>\d+)", re.M)

pytestmark = pytest.mark.integration


@dataclass
class FabRun:
    returncode: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        return {m["host"]: {k: int(m[k]) for k in ("ok", "changed", "failed")} for m in RECAP.finditer(self.output)}


class Project:
    """An inventory for the example project, and `fab` run with it against the fleet."""

    def __init__(self, fleet: Fleet, workdir: Path, hosts: dict[str, dict]):
        self.fleet = fleet
        self.workdir = workdir
        self.inventory_path = workdir / "inventory.yaml"
        self.data = {
            "project": {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
                        "user": "arches", "requirements": "requirements.txt"},
            "broker": {"kind": "redis"},
            "celery": {"app": "demo_proj.celery", "concurrency": 2, "stopwaitsecs": 60},
            "hosts": hosts,
        }
        self.write()

    def write(self) -> None:
        self.inventory_path.write_text(yaml.safe_dump(self.data, sort_keys=False))

    def fab(self, *args: str, ssh_config: Path | None = None, timeout: int = 900, env: dict | None = None,
            root: Path = ROOT) -> FabRun:
        """`fab ARGS` with this inventory; `root`: the fabcelery tree whose fabfile runs."""
        command = [str(Path(sys.executable).parent / "fab"), "-r", str(root),
                   "-S", str(ssh_config or self.fleet.ssh_config_path), *args]
        environment = {**os.environ, "FABCELERY_INVENTORY": str(self.inventory_path), **(env or {})}
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)
        output = done.stdout + done.stderr
        print(f"$ {' '.join(command)}\n{output}")  # shown by pytest when a test fails
        return FabRun(done.returncode, output)


def run_checked(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with the output captured; a non-zero exit raises an error that shows
    the command, its status and its stdout and stderr."""
    done = subprocess.run(args, capture_output=True, **kwargs)
    if done.returncode != 0:
        def text(output):
            return output.decode(errors="replace") if isinstance(output, bytes) else output
        raise CommandFailed(done.returncode, args, text(done.stdout), text(done.stderr))
    return done


def wait_for(predicate, timeout: float, interval: float = 0.2):
    """predicate()'s first true value within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def earlier_fabcelery(commit: str, tmp_path_factory) -> Path:
    """fabcelery's tree as it was at `commit` (from git), to deploy a server as that version did."""
    tree = tmp_path_factory.mktemp(f"fabcelery-{commit[:8]}")
    archive = run_checked(["git", "-C", str(ROOT), "archive", commit])
    run_checked(["tar", "-x", "-C", str(tree)], input=archive.stdout)
    return tree


def install_example_project(fleet: Fleet, host) -> None:
    """What a user has done before the first deploy: the project's code is on the server."""
    fleet.put_tree(host, EXAMPLE, "/opt/arches/demo_proj", owner="root:root")


# two pools, on two hosts of a cluster (test_check_cluster, test_queues_cluster)
CLUSTER_POOLS = {"celery": {"queues": ["celery"], "concurrency": 2},
                 "exports": {"queues": ["exports", "bulk"], "concurrency": 1, "prefetch_multiplier": 1}}


@contextmanager
def pools_cluster(fleet: Fleet, tmp_path_factory, names: tuple[str, str, str]):
    """Three RabbitMQ nodes on Debian 13, deployed: NAMES[0] also runs beat and the pool celery,
    NAMES[1] the pool exports (queues exports and bulk, one task at a time), NAMES[2] a node only.
    Yields (project, hosts); removes the hosts afterwards.

    The hosts start from the RabbitMQ snapshot (tests/integration/snapshots.py: a single node
    that also runs a worker and beat), so this deploy joins three fresh nodes into a cluster and
    takes the programs off NAMES[2]; a cluster's first deploy on bare images is test_rabbitmq_cluster's."""
    from .snapshots import start_rabbitmq_node  # snapshots imports this module

    with ThreadPoolExecutor(len(names)) as pool:
        hosts = dict(zip(names, pool.map(lambda n: start_rabbitmq_node(fleet, n), names), strict=True))
    try:
        inventory = {name: {"roles": ["broker"], "internal_address": hosts[name].internal_ip} for name in names}
        inventory[names[0]].update(roles=["broker", "worker", "beat"], pools=["celery"])
        inventory[names[1]].update(roles=["broker", "worker"], pools=["exports"])
        project = Project(fleet, tmp_path_factory.mktemp(names[0]), inventory)
        project.data["broker"]["kind"] = "rabbitmq"
        project.data["celery"]["pools"] = CLUSTER_POOLS
        project.write()
        deploy = project.fab("deploy")
        assert deploy.returncode == 0, deploy.output
        yield project, hosts
    finally:
        for host in hosts.values():
            fleet.remove(host)


def server(fleet: Fleet, host):
    """testinfra's view of a test host, through podman (independent of the deploy's SSH)."""
    return testinfra.get_host(f"podman://{fleet._host(host).container}")


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    cleanup_stale()
    ensure_images(tuple(SUITES))
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    yield fleet
    fleet.remove_all()
