"""Failover in seconds (issue 21, item 4), measured as a user would see it: a producer that sends a
task every quarter second, as a web application does, and the time from the broker's stop (or
restart) to the first run of a task sent after it.

- A three-node RabbitMQ cluster (Debian 13) and a worker host: the node the worker uses is
  stopped, three times (each time the node the worker is on then); the first task sent after
  `systemctl stop` began runs within 10 s of it on this shared machine (the target is 5 s; the
  README has the median), the tasks queued before the stop run too, a countdown task sent
  before the stop runs once, when it is due, and no task is lost or runs twice.
- One broker host (Redis on Debian 12, RabbitMQ on Debian 13) restarted: the worker takes
  tasks again within 10 s of the broker answering (the port accepts connections again).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Project, install_example_project, wait_for
from .snapshots import start_deployed, start_rabbitmq_node

MQ = ("fo-mq1", "fo-mq2", "fo-mq3")
WORKER = "fo-w"
APP = "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python"
BOUND = 10          # seconds, on the shared test machine (the target: 5 s)
FAILOVERS = 3
COUNTDOWN = 10      # seconds: due after the stop, before the producer stops
FIGURES: dict[str, list[float]] = {}

# A producer as a web application is one: started once, it sends a `note` task every 0.25 s until
# the file argv[1] exists, and prints for each task the time it began sending it, and whether the
# broker confirmed it. Fire-and-forget (ignore_result): no reply queue on one node.
PRODUCER = """
import os, sys, time
from demo_proj.celery import app
i = 0
while not os.path.exists(sys.argv[1]):
    tag, began = f"{sys.argv[2]}-{i}", time.time()
    try:
        app.send_task("demo_proj.tasks.note", args=[tag, 0], ignore_result=True)
        print("sent", tag, began, flush=True)
    except Exception as exc:
        print("failed", tag, began, type(exc).__name__, flush=True)
    i += 1
    time.sleep(0.25)
"""
# Sends the tags argv[3:] as `note` tasks that take argv[1] seconds, with a countdown of argv[2]
# seconds unless it is 0.
QUEUE = """
import sys
from demo_proj.celery import app
for tag in sys.argv[3:]:
    app.send_task("demo_proj.tasks.note", args=[tag, float(sys.argv[1])], countdown=int(sys.argv[2]) or None,
                  ignore_result=True)
"""
# When the broker's port accepts a connection again: polled from the broker host itself.
ANSWERS = ("while ! (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; do sleep 0.05; done; "
           "date +%s.%N")


class Producer:
    """PRODUCER running on a host (podman exec), until stop()."""

    def __init__(self, fleet, host, prefix: str):
        self.fleet, self.host, self.stop_file = fleet, host, f"/tmp/stop-{prefix}"
        command = ["podman", "exec", "--user", "root", host.container, "bash", "-c",
                   f"rm -f {self.stop_file}; {APP} -c {shlex.quote(PRODUCER)} {self.stop_file} {prefix}"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> tuple[dict[str, float], list[str]]:
        """(tag -> when it began to be sent, for every confirmed send; the lines of failed sends)."""
        self.fleet.exec(self.host, f"touch {self.stop_file}")
        out, _ = self.process.communicate(timeout=120)
        sent = {line.split()[1]: float(line.split()[2]) for line in out.splitlines() if line.startswith("sent ")}
        return sent, [line for line in out.splitlines() if line.startswith("failed ")]


def queue_notes(fleet, host, tags: list[str], seconds: float = 0, countdown: int = 0) -> None:
    fleet.exec(host, f"{APP} -c {shlex.quote(QUEUE)} {seconds} {countdown} " + " ".join(tags))


def notes(fleet, host) -> dict[str, list[float]]:
    """tag -> when each run of it ended (~arches/notes on the worker host)."""
    runs: dict[str, list[float]] = {}
    for line in fleet.exec(host, "cat /home/arches/notes 2>/dev/null", check=False).stdout.splitlines():
        stamp, _, tag = line.partition(" ")
        runs.setdefault(tag, []).append(float(stamp))
    return runs


def wait_for_notes(fleet, host, tags, timeout: float = 120) -> dict[str, list[float]]:
    deadline = time.monotonic() + timeout
    while True:
        runs = notes(fleet, host)
        missing = [t for t in tags if t not in runs]
        if not missing or time.monotonic() > deadline:
            assert not missing, f"{len(missing)} tasks never ran: {missing[:10]}"
            return runs
        time.sleep(1)


def first_sent_after(sent: dict[str, float], moment: float) -> str:
    return min((t for t, began in sent.items() if began >= moment), key=sent.get)


def report(name: str, value: float) -> None:
    FIGURES.setdefault(name, []).append(round(value, 1))


# --- the cluster ------------------------------------------------------------------------------

def ctl_json(fleet, host, command: str) -> object:
    return json.loads(fleet.exec(host, f"timeout 60 rabbitmqctl -q {command} --formatter json").stdout)


@pytest.fixture(scope="module")
def cluster(fleet, tmp_path_factory):
    # from the snapshots: three RabbitMQ nodes (a worker and beat there too, which this deploy
    # takes off) and a worker host (Redis's, which this deploy points at the cluster); a
    # cluster's first deploy on bare images is test_rabbitmq_cluster's
    def start(name: str):
        return start_deployed(fleet, name, suite="trixie", kind="worker") if name == WORKER \
            else start_rabbitmq_node(fleet, name)

    names = (*MQ, WORKER)
    with ThreadPoolExecutor(len(names)) as pool:
        hosts = dict(zip(names, pool.map(start, names), strict=True))
    try:
        inventory = {name: {"roles": ["broker"], "internal_address": hosts[name].internal_ip} for name in MQ}
        inventory[WORKER] = {"roles": ["worker", "beat"]}
        project = Project(fleet, tmp_path_factory.mktemp("failover"), inventory)
        project.data["broker"]["kind"] = "rabbitmq"
        project.write()
        run = project.fab("deploy")
        assert run.returncode == 0, run.output
        yield {"fleet": fleet, "hosts": hosts, "project": project}
    finally:
        print("failover figures (s): " + "; ".join(f"{k}: {v}" for k, v in FIGURES.items())
              + " | uptime: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
        for host in hosts.values():
            fleet.remove(host)


def connected_node(cluster) -> str:
    """The node that holds the worker host's connections."""
    fleet, hosts = cluster["fleet"], cluster["hosts"]
    by_ip = {hosts[name].internal_ip: name for name in MQ}

    def address(value) -> str:      # "10.88.0.5" or [10, 88, 0, 5]
        return ".".join(str(p) for p in value) if isinstance(value, list) else str(value)

    up = next(n for n in MQ if fleet.exec(hosts[n], "systemctl is-active rabbitmq-server",
                                          check=False).stdout.strip() == "active")
    counts: dict[str, int] = {}
    for conn in ctl_json(fleet, hosts[up], "list_connections host peer_host user"):
        if address(conn["peer_host"]) == hosts[WORKER].internal_ip and conn["user"] == "demo_proj":
            node = by_ip[address(conn["host"])]
            counts[node] = counts.get(node, 0) + 1
    assert counts, "the worker host holds no connection"
    return max(counts, key=counts.get)


def whole(cluster) -> bool:
    """Every node runs, in the cluster, and the celery queue has its three members online."""
    fleet, hosts = cluster["fleet"], cluster["hosts"]
    status = ctl_json(fleet, hosts[MQ[0]], "cluster_status")
    if len(status["running_nodes"]) != len(MQ):
        return False
    queues = ctl_json(fleet, hosts[MQ[0]], "list_queues -p demo_proj name online")
    return all(len(q["online"]) == len(MQ) for q in queues if q["name"] == "celery")


def wait_until_whole(cluster, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not whole(cluster):
        assert time.monotonic() < deadline, "the cluster is not whole again"
        time.sleep(2)


def test_stopping_the_workers_node_runs_the_next_task_within_seconds(cluster):
    fleet, hosts = cluster["fleet"], cluster["hosts"]
    worker = hosts[WORKER]
    fleet.exec(worker, "rm -f /home/arches/notes")
    may_repeat: set[str] = set()
    for round_ in range(FAILOVERS):
        node = connected_node(cluster)
        queued = [f"queued{round_}-{i}" for i in range(8)]       # 2 processes: about 4 s of work
        due = f"countdown{round_}"
        prefix = f"sent{round_}-"
        producer = Producer(fleet, worker, prefix[:-1])
        # the producer runs (its first task ran) before the tasks are queued: they are still in
        # the queue, or in the worker, when the node stops right after
        assert wait_for(lambda prefix=prefix: any(t.startswith(prefix) for t in notes(fleet, worker)), 120)
        due_sent = time.time()
        queue_notes(fleet, worker, [due], countdown=COUNTDOWN)      # held by the worker when the node stops
        queue_notes(fleet, worker, queued, seconds=1)
        stopped = time.time()
        fleet.exec(hosts[node], "systemctl stop rabbitmq-server")
        stop_done = time.time()
        report("systemctl stop took", stop_done - stopped)
        time.sleep(BOUND + 2)
        sent, failed = producer.stop()
        assert not failed, failed[:5]
        runs = wait_for_notes(fleet, worker, [*queued, due, *sent])
        # a task a worker had just taken when its node stopped may run again: its acknowledgement
        # went with the connection and the queue delivered it anew (AMQP delivers at least once).
        # So may the one task being sent while the node stopped: its confirmation went with the
        # connection, and Celery published it again (seen once: two runs 1 ms apart, two
        # messages). Nothing else runs twice: not a task sent once the stop was done, nor the
        # countdown task; at most one per worker process and the one being sent, each ending
        # its first run within the bound (the notes of every round so far: a second run may
        # come after its round was checked)
        may_repeat.update(queued)
        may_repeat.update(t for t, began in sent.items() if began <= stop_done)
        twice = {t: r for t, r in runs.items() if len(r) > 1}
        report("tasks that ran twice, all rounds so far", len(twice))
        assert len(twice) <= 3 * (round_ + 1) and all(t in may_repeat and len(r) == 2 and r[0] - stopped <= BOUND
                                                      for t, r in twice.items()), f"tasks that ran twice: {twice}"
        first = first_sent_after(sent, stopped)
        report("first task sent after the stop began ran, after it", runs[first][0] - stopped)
        report("last task queued before the stop ran, after the stop began",
               max(runs[t][0] for t in queued) - stopped)
        assert runs[first][0] - stopped <= BOUND, (node, first, runs[first][0] - stopped)
        assert max(runs[t][0] for t in queued) - stopped <= BOUND
        assert any(runs[t][0] > stopped for t in queued), "every queued task had run before the stop"
        # the countdown task ran once (above), after the stop, and not before it was due
        assert runs[due][0] > stopped and runs[due][0] >= due_sent + COUNTDOWN - 0.5
        fleet.exec(hosts[node], "systemctl start rabbitmq-server")
        wait_until_whole(cluster)
    print("failover figures (s):", FIGURES)


# --- one broker, restarted -----------------------------------------------------------------------

SINGLE = {"redis": ("bookworm", 6379, "redis-server"), "rabbitmq": ("trixie", 5672, "rabbitmq-server")}


@pytest.fixture(scope="module", params=list(SINGLE), ids=[f"{k}-{v[0]}" for k, v in SINGLE.items()])
def single(request, fleet, tmp_path_factory):
    kind = request.param
    suite, port, service = SINGLE[kind]
    name = f"fo-{kind[:2]}"
    host = fleet.start(name, suite=suite)
    try:
        install_example_project(fleet, host)
        project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
        project.data["broker"]["kind"] = kind
        project.write()
        run = project.fab("deploy")
        assert run.returncode == 0, run.output
        yield {"fleet": fleet, "host": host, "kind": kind, "port": port, "service": service}
    finally:
        fleet.remove(host)


def test_after_a_broker_restart_the_worker_takes_tasks_within_seconds(single):
    fleet, host = single["fleet"], single["host"]
    fleet.exec(host, "rm -f /home/arches/notes")
    producer = Producer(fleet, host, "restart")
    time.sleep(1)
    restarted = time.time()
    fleet.exec(host, f"systemctl restart {single['service']}")
    answered = float(fleet.exec(host, ANSWERS.format(port=single["port"])).stdout.strip())
    time.sleep(BOUND + 2)
    sent, _failed = producer.stop()       # sends while the broker is down fail, and are not counted
    # every task sent once the broker answered again runs; one sent in the instant of the restart may
    # be lost on Redis (seen once: a worker's fetch cut by the restart), so those are reported, not asserted
    after = [t for t, began in sent.items() if began >= answered]
    runs = wait_for_notes(fleet, host, after)     # every tag that ran, those sent earlier too
    lost = sorted(t for t, began in sent.items() if began < answered and t not in runs)
    if lost:
        print(f"{single['kind']}: sent before the broker answered again and never ran: {lost}")
    assert not {t: r for t, r in runs.items() if len(r) > 1}
    first = first_sent_after(sent, answered)
    took = runs[first][0] - answered
    report(f"{single['kind']}: restart took", answered - restarted)
    report(f"{single['kind']}: first task sent after the broker answered ran, after that", took)
    print("restart figures (s):", FIGURES)
    assert took <= BOUND, (first, took)
