"""A three-node RabbitMQ cluster with quorum queues, and two worker hosts that fail over
(issue 14). Five Debian 13 hosts (RabbitMQ 4.0), booted at once and deployed once; the
tests below read and change the cluster in order: formed, a node stopped (failover), the
node back, a node that lost its data rejoins, a rolling restart under a stream of tasks.
"""

from __future__ import annotations

import json
import shlex
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Project, install_example_project, server

MQ = ("cl-mq1", "cl-mq2", "cl-mq3")
WORKERS = ("cl-w1", "cl-w2")
NODES = {f"rabbit@{name}" for name in MQ}
COOKIE = "/var/lib/rabbitmq/.erlang.cookie"
PASSWORD_FILE = "/var/lib/fabcelery/demo_proj/broker-password"
APP = "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def cluster(fleet, tmp_path_factory):
    names = MQ + WORKERS
    with ThreadPoolExecutor(len(names)) as pool:
        hosts = dict(zip(names, pool.map(lambda n: fleet.start(n, suite="trixie"), names), strict=True))
    try:
        for name in WORKERS:
            install_example_project(fleet, hosts[name])
        inventory = {name: {"roles": ["broker"], "internal_address": hosts[name].internal_ip} for name in MQ}
        inventory["cl-w1"] = {"roles": ["worker", "beat"]}
        inventory["cl-w2"] = {"roles": ["worker"]}
        project = Project(fleet, tmp_path_factory.mktemp("cluster"), inventory)
        project.data["broker"]["kind"] = "rabbitmq"
        project.write()
        started = time.monotonic()
        first = project.fab("deploy")
        TIMINGS["first deploy"] = time.monotonic() - started
        yield {"fleet": fleet, "hosts": hosts, "project": project, "first": first,
               "srv": {name: server(fleet, host) for name, host in hosts.items()}}
    finally:
        print("cluster timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))
        for host in hosts.values():
            fleet.remove(host)


def ctl_json(srv, command: str) -> object:
    return json.loads(srv.check_output(f"timeout 60 rabbitmqctl -q {command} --formatter json"))


def cluster_status(srv) -> dict:
    return ctl_json(srv, "cluster_status")


def quorum_queue(srv, name: str = "celery") -> dict:
    queues = ctl_json(srv, "list_queues -p demo_proj name type members online")
    return next(q for q in queues if q["name"] == name)


def listeners(srv, port: int) -> set[str]:
    out = srv.check_output(f"ss -Hltn 'sport = :{port}'")
    return {line.split()[3].rpartition(":")[0] for line in out.splitlines() if line.strip()}


def send_task(srv, *args: str) -> object:
    out = srv.check_output(f"{APP} -m demo_proj.sendtask " + " ".join(args))
    return json.loads(out.strip().splitlines()[-1])


def send_notes(srv, tags: list[str], seconds: float = 0) -> None:
    """Fire-and-forget: each tag as a `note` task, sent (and confirmed by the broker) in one process."""
    code = ("import sys; from demo_proj.celery import app\n"
            "for tag in sys.argv[2:]: app.send_task('demo_proj.tasks.note', args=[tag, float(sys.argv[1])])")
    srv.check_output(f"{APP} -c {shlex.quote(code)} {seconds} " + " ".join(tags))


def notes(cluster) -> dict[str, float]:
    """tag -> when it ran (the earliest, if it ran twice), over both worker hosts."""
    seen: dict[str, float] = {}
    for name in WORKERS:
        for line in cluster["srv"][name].run("cat /home/arches/notes 2>/dev/null").stdout.splitlines():
            stamp, _, tag = line.partition(" ")
            seen[tag] = min(float(stamp), seen.get(tag, float("inf")))
    return seen


def wait_for_notes(cluster, tags: list[str], timeout: float = 120) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        seen = notes(cluster)
        missing = [t for t in tags if t not in seen]
        if not missing or time.monotonic() > deadline:
            assert not missing, f"{len(missing)} tasks never ran: {missing[:10]}"
            return seen
        time.sleep(1)


def wait_for_cluster(srv, running: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = cluster_status(srv)
        if set(status["running_nodes"]) == running or time.monotonic() > deadline:
            return status
        time.sleep(2)


def test_the_first_deploy_forms_a_three_node_cluster(cluster):
    run = cluster["first"]
    assert run.returncode == 0, run.output
    assert all(r["failed"] == 0 for r in run.recap().values()), run.output
    for name in MQ:
        status = cluster_status(cluster["srv"][name])
        assert set(status["running_nodes"]) == NODES, (name, status["running_nodes"])
        assert set(status["disk_nodes"]) == NODES
        assert status["partitions"] == {} and status["alarms"] == []


def test_the_celery_queue_is_a_quorum_queue_on_every_node(cluster):
    queue = quorum_queue(cluster["srv"]["cl-mq2"])
    assert queue["type"] == "quorum"
    assert set(queue["members"]) == NODES and set(queue["online"]) == NODES


def test_guest_is_gone_on_every_node_and_the_account_is_the_clusters(cluster):
    for name in MQ:
        users = [u["user"] for u in ctl_json(cluster["srv"][name], "list_users")]
        assert "demo_proj" in users and "guest" not in users, (name, users)


def test_one_cookie_for_the_cluster_0400_and_never_shown(cluster):
    digests = set()
    for name in MQ:
        srv = cluster["srv"][name]
        cookie = srv.file(COOKIE)
        assert (cookie.user, cookie.group, cookie.mode) == ("rabbitmq", "rabbitmq", 0o400)
        digests.add(srv.check_output(f"sha256sum {COOKIE}").split()[0])
        assert srv.file(COOKIE).content_string.strip() not in cluster["first"].output
        assert srv.file(PASSWORD_FILE).content_string.strip() not in cluster["first"].output
    assert len(digests) == 1


def test_no_cluster_port_listens_on_every_interface(cluster):
    for name in MQ:
        srv, ip = cluster["srv"][name], cluster["hosts"][name].internal_ip
        for port in (4369, 5672):
            assert listeners(srv, port) == {"127.0.0.1", ip}, (name, port)
        assert listeners(srv, 25672) == {ip}, name     # the distribution: one address, the peers'
    for name in WORKERS:
        assert not listeners(cluster["srv"][name], 5672)


def test_tasks_run_and_the_workers_have_every_node_in_their_url(cluster):
    srv = cluster["srv"]["cl-w2"]
    assert send_task(srv, "add", "2", "3") == 5
    settings = srv.file("/opt/arches/demo_proj/demo_proj/settings_local.py").content_string
    assert settings.count("amqp://demo_proj:") == 3 and 'CELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"' in settings


def test_a_second_deploy_changes_nothing(cluster):
    started = time.monotonic()
    run = cluster["project"].fab("deploy")
    TIMINGS["no-op deploy"] = time.monotonic() - started
    assert run.returncode == 0, run.output
    assert {h: r["changed"] for h, r in run.recap().items()} == {h: 0 for h in MQ + WORKERS}, run.output
