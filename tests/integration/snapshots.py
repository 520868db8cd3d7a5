"""Deployed hosts from a snapshot.

A module that does not test the first deploy (day two: restarts, status, pools, undeploy, ...)
can start its hosts already deployed, from a snapshot image, instead of paying a first deploy
(apt, a virtualenv, pip) per host:

    host = start_deployed(fleet, "ops-a", suite="trixie", kind="broker")   # broker, worker, beat
    host = start_deployed(fleet, "ops-b", suite="bookworm", kind="worker")  # worker only
    host = start_deployed(fleet, "st-a", suite="trixie", kind="rabbitmq")   # broker, worker, beat

then put the module's inventory in place and run `fab deploy` as before: on such a host it
is a day-two deploy (new node names and addresses, the module's settings) that makes the
host what the module's inventory says. The snapshots are made by the run when missing:
one two-host Redis fleet per Debian release (`snap-mq`: broker, worker and beat with its
internal address; `snap-w`: a worker), deployed from bare test-host images with `fab
deploy` and the inventory below, the broker host then deployed alone (Redis on loopback
only, so that it starts at any address), and saved with `podman commit` (Fleet.snapshot).
A single RabbitMQ host (`snap-rq`: broker, worker and beat) is made apart, when a module
first asks for one of its release: deployed alone, then RabbitMQ stopped and its node's
data and fabcelery's record of the account removed, because a RabbitMQ node is named
after its host (rabbit@HOSTNAME) and keeps its users and vhosts under that name: a host
booted from the snapshot, with another name, starts an empty node, whose vhost, user and
password (the password file stays) the module's deploy makes again, as for a new node.

Their tag carries a hash of what shapes them: the deploy's code and templates, the example
project, this file (the inventory and the steps above) and the bare image; a change there
makes new ones, a change to another test file does not. The harness's per-host settings
(the run's SSH key, the package caches) are not inputs: Fleet.start writes them again on a
host booted from a snapshot. The first deploy itself stays tested on bare images
(test_deploy, test_fleet, ...) on both releases.

A run holds the snapshots it uses (testhost.harness.hold_image) and, once per process,
removes the other snapshot images that no run holds, unused for SNAPSHOT_UNUSED_FOR seconds
and used by no container (testhost.harness.prune_images): older hashes do not pile up.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testhost.harness import SUITES, Fleet, TestHost, hold_image, image_name, prune_images

from .conftest import ROOT, Project, install_example_project, run_checked

SNAPSHOT_REPOSITORY = "localhost/fabcelery-snapshot"
SNAPSHOT_KINDS = {"broker": "snap-mq", "worker": "snap-w", "rabbitmq": "snap-rq"}
# the kinds made together, by one first deploy (a group is made when one of its kinds is asked for)
SNAPSHOT_GROUPS = (("broker", "worker"), ("rabbitmq",))
# what a host booted from the RabbitMQ snapshot must not keep (see above)
RABBITMQ_RESET = ("systemctl stop rabbitmq-server && rm -rf /var/lib/rabbitmq/mnesia "
                  "/var/lib/fabcelery/demo_proj/rabbitmq-account")
SNAPSHOT_INPUTS = ("tasks", "templates", "fabfile.py", "fabcelery.py", "pyproject.toml", "examples/demo_proj",
                   "tests/integration/snapshots.py")
SNAPSHOT_LABEL = "fabcelery.snapshot.inputs-sha256"
SNAPSHOT_LOCK_DIR = Path("/run")
# another hash's snapshots stay this long after their last use (a second checkout on the machine)
SNAPSHOT_UNUSED_FOR = 3600
# the inventory the snapshots are deployed with (the builder's own, whatever Project's defaults)
SNAPSHOT_PROJECT = {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
                    "user": "arches", "requirements": "requirements.txt"}
SNAPSHOT_CELERY = {"app": "demo_proj.celery", "concurrency": 2, "stopwaitsecs": 60}
_snapshot_hashes: dict[str, str] = {}
_pruned = False


def snapshot_image(suite: str, kind: str) -> str:
    return f"{SNAPSHOT_REPOSITORY}:{suite}-{kind}-{snapshot_hash(suite)[:16]}"


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


def _prune_once() -> None:
    """The snapshot images of other hashes, once per process (see the module's docstring)."""
    global _pruned
    if _pruned:
        return
    _pruned = True
    current = {snapshot_image(suite, kind) for suite in SUITES if _image_exists(image_name(suite))
               for kind in SNAPSHOT_KINDS}
    prune_images(SNAPSHOT_REPOSITORY, current, SNAPSHOT_UNUSED_FOR)


def ensure_snapshots(suite: str, kind: str = "broker") -> None:
    """The snapshot images of `suite` of the group of `kind`, held by this process, made now
    (one process at a time) when missing."""
    group = next(g for g in SNAPSHOT_GROUPS if kind in g)
    wanted = {k: snapshot_image(suite, k) for k in group}
    for image in wanted.values():
        hold_image(image)
    _prune_once()
    if all(_image_exists(image) for image in wanted.values()):
        return
    lock = SNAPSHOT_LOCK_DIR / f"fabcelery-snapshot-{suite}-{group[0]}-{snapshot_hash(suite)[:16]}.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)      # another worker may be making them
        if all(_image_exists(image) for image in wanted.values()):
            return
        started = time.monotonic()
        if group == ("rabbitmq",):
            _make_rabbitmq_snapshot(suite, wanted["rabbitmq"])
        else:
            _make_redis_snapshots(suite, wanted)
        print(f"made the {suite} snapshots in {time.monotonic() - started:.0f} s: {', '.join(wanted.values())}")


def _make_redis_snapshots(suite: str, wanted: dict[str, str]) -> None:
    """The two-host Redis fleet, deployed, then the broker host alone (see the module's docstring)."""
    builder = Fleet(Path(tempfile.mkdtemp(prefix=f"fabcelery-snapshot-{suite}-")))
    try:
        with ThreadPoolExecutor(len(wanted)) as pool:
            hosts = dict(zip(wanted, pool.map(lambda kind: builder.start(SNAPSHOT_KINDS[kind], suite=suite),
                                              wanted), strict=True))
        for host in hosts.values():
            install_example_project(builder, host)
        project = Project(builder, builder.state_dir, {})
        project.data = {
            "project": dict(SNAPSHOT_PROJECT), "broker": {"kind": "redis"}, "celery": dict(SNAPSHOT_CELERY),
            "hosts": {SNAPSHOT_KINDS["broker"]: {"roles": ["broker", "worker", "beat"],
                                                 "internal_address": hosts["broker"].internal_ip},
                      SNAPSHOT_KINDS["worker"]: {"roles": ["worker"]}},
        }
        project.write()
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


def _make_rabbitmq_snapshot(suite: str, image: str) -> None:
    """One RabbitMQ host, deployed alone, its node reset (see the module's docstring)."""
    name = SNAPSHOT_KINDS["rabbitmq"]
    builder = Fleet(Path(tempfile.mkdtemp(prefix=f"fabcelery-snapshot-{suite}-rabbitmq-")))
    try:
        host = builder.start(name, suite=suite)
        install_example_project(builder, host)
        project = Project(builder, builder.state_dir, {})
        project.data = {"project": dict(SNAPSHOT_PROJECT), "broker": {"kind": "rabbitmq"},
                        "celery": dict(SNAPSHOT_CELERY), "hosts": {name: {"roles": ["broker", "worker", "beat"]}}}
        project.write()
        deploy = project.fab("deploy")
        if deploy.returncode != 0:
            raise RuntimeError(f"the first deploy that makes the {suite} RabbitMQ snapshot failed:\n{deploy.output}")
        builder.exec(host, RABBITMQ_RESET)
        builder.snapshot(host, image, {SNAPSHOT_LABEL: snapshot_hash(suite)})
    finally:
        builder.remove_all()
        shutil.rmtree(builder.state_dir, ignore_errors=True)


def start_deployed(fleet: Fleet, name: str, suite: str = "trixie", kind: str = "broker") -> TestHost:
    """A host that a first deploy of the example project has made (see above): `kind` broker
    (roles broker, worker, beat on Redis), worker, or rabbitmq (roles broker, worker, beat on
    RabbitMQ, its node empty); its inventory name is still the snapshot's until the module's
    own `fab deploy`."""
    if kind not in SNAPSHOT_KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(SNAPSHOT_KINDS)}")
    ensure_snapshots(suite, kind)
    return fleet.start(name, suite=suite, image=snapshot_image(suite, kind))


def start_rabbitmq_node(fleet: Fleet, name: str, suite: str = "trixie") -> TestHost:
    """A RabbitMQ host from the snapshot (start_deployed) to be a node of a module's cluster, its
    supervisord stopped: the image's worker, still set up for a single node and its password,
    would otherwise connect once the module's deploy makes the account on the new node and
    declare the `celery` queue there as a classic queue, before the deploy restarts it with the
    cluster's settings (whose workers declare quorum queues, and would be refused it)."""
    host = start_deployed(fleet, name, suite=suite, kind="rabbitmq")
    fleet.exec(host, "systemctl stop demo_proj-supervisord.service")
    return host
