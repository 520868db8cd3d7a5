"""Real test servers for the integration tests: podman containers that boot systemd
and run sshd, reached over SSH exactly as production is (see testhost/).

The tests drive the hosts only through `fab` (a subprocess, as a user runs it) and
check them independently with testinfra over `podman exec`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
import yaml

from testhost.harness import CommandFailed, Fleet, TestHost, cleanup_stale, ensure_images, image_name

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


# --- deployed hosts from a snapshot ----------------------------------------------------------
#
# A module that does not test the first deploy (day two: restarts, status, pools, ...) can
# start its hosts already deployed, from a snapshot image, instead of paying a first deploy
# (apt, a virtualenv, pip) per host:
#
#     host = start_deployed(fleet, "ops-a", suite="trixie", kind="broker")   # broker, worker, beat
#     host = start_deployed(fleet, "ops-b", suite="bookworm", kind="worker")  # worker only
#
# then put the module's inventory in place and run `fab deploy` as before: on such a host it
# is a day-two deploy (new node names and addresses, the module's settings) that makes the
# host what the module's inventory says. The snapshots are made by this run when missing:
# one two-host Redis fleet per Debian release (`snap-mq`: broker, worker and beat with its
# internal address; `snap-w`: a worker), deployed from bare test-host images with
# `fab deploy`, the broker host then deployed alone (Redis on loopback only, so that it
# starts at any address), and saved with `podman commit` (Fleet.snapshot). Their tag carries a hash of
# everything that shapes them (the deploy's code and templates, the example project, this
# file, the bare image), so any change there makes new ones; the first deploy itself stays
# tested on bare images (test_deploy, test_fleet, ...) on both releases.

SNAPSHOT_KINDS = {"broker": "snap-mq", "worker": "snap-w"}
SNAPSHOT_INPUTS = ("tasks", "templates", "fabfile.py", "fabcelery.py", "pyproject.toml", "examples/demo_proj",
                   "tests/integration/conftest.py")
SNAPSHOT_LABEL = "fabcelery.snapshot.inputs-sha256"
SNAPSHOT_LOCK_DIR = Path("/run")
_snapshot_hashes: dict[str, str] = {}


def snapshot_image(suite: str, kind: str) -> str:
    return f"localhost/fabcelery-snapshot:{suite}-{kind}-{snapshot_hash(suite)[:16]}"


def snapshot_hash(suite: str) -> str:
    """sha256 of the snapshot's inputs: the files (paths and contents) and the bare image's id."""
    if suite not in _snapshot_hashes:
        digest = hashlib.sha256()
        for top in SNAPSHOT_INPUTS:
            path = ROOT / top
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                if "__pycache__" in file.parts:
                    continue
                digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
        image_id = run_checked(["podman", "image", "inspect", "--format", "{{.Id}}", image_name(suite)], text=True)
        digest.update(image_id.stdout.strip().encode())
        _snapshot_hashes[suite] = digest.hexdigest()
    return _snapshot_hashes[suite]


def _image_exists(image: str) -> bool:
    return subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode == 0


def ensure_snapshots(fleet: Fleet, suite: str) -> None:
    """The snapshot images of `suite`, made now (one process at a time) when missing."""
    wanted = {kind: snapshot_image(suite, kind) for kind in SNAPSHOT_KINDS}
    if all(_image_exists(image) for image in wanted.values()):
        return
    lock = SNAPSHOT_LOCK_DIR / f"fabcelery-snapshot-{suite}-{snapshot_hash(suite)[:16]}.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)      # another worker may be making them
        if all(_image_exists(image) for image in wanted.values()):
            return
        started = time.monotonic()
        builder = Fleet(Path(tempfile.mkdtemp(prefix=f"fabcelery-snapshot-{suite}-")))
        try:
            with ThreadPoolExecutor(len(SNAPSHOT_KINDS)) as pool:
                hosts = dict(zip(SNAPSHOT_KINDS, pool.map(lambda name: builder.start(name, suite=suite),
                                                          SNAPSHOT_KINDS.values()), strict=True))
            for host in hosts.values():
                install_example_project(builder, host)
            project = Project(builder, builder.state_dir, {
                SNAPSHOT_KINDS["broker"]: {"roles": ["broker", "worker", "beat"],
                                           "internal_address": hosts["broker"].internal_ip},
                SNAPSHOT_KINDS["worker"]: {"roles": ["worker"]},
            })
            deploy = project.fab("deploy")
            if deploy.returncode != 0:
                raise RuntimeError(f"the first deploy that makes the {suite} snapshots failed:\n{deploy.output}")
            # The broker host alone again: Redis on loopback only, so that a host booted from its
            # snapshot (with another address) starts it; the module's deploy binds its own address.
            project.data["hosts"] = {SNAPSHOT_KINDS["broker"]: {"roles": ["broker", "worker", "beat"]}}
            project.write()
            alone = project.fab("-H", SNAPSHOT_KINDS["broker"], "deploy")
            if alone.returncode != 0:
                raise RuntimeError(f"the deploy that makes the {suite} broker snapshot failed:\n{alone.output}")
            labels = {SNAPSHOT_LABEL: snapshot_hash(suite)}
            with ThreadPoolExecutor(len(hosts)) as pool:
                list(pool.map(lambda kind: builder.snapshot(hosts[kind], wanted[kind], labels), hosts))
        finally:
            builder.remove_all()
            shutil.rmtree(builder.state_dir, ignore_errors=True)
        print(f"made the {suite} snapshots in {time.monotonic() - started:.0f} s: {', '.join(wanted.values())}")


def start_deployed(fleet: Fleet, name: str, suite: str = "trixie", kind: str = "broker") -> TestHost:
    """A host that a first deploy of the example project has made (see above): `kind` broker
    (roles broker, worker, beat on Redis) or worker; its inventory name is still the
    snapshot's until the module's own `fab deploy`."""
    if kind not in SNAPSHOT_KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(SNAPSHOT_KINDS)}")
    ensure_snapshots(fleet, suite)
    return fleet.start(name, suite=suite, image=snapshot_image(suite, kind))
