"""Is work flowing? `fab status`'s queue rows on a three-node RabbitMQ cluster (Debian 13).

qc-m1 runs a node, beat and the pool celery (queue celery); qc-m2 a node and the pool exports
(queues exports and bulk, one task at a time); qc-m3 a node only. Each node reads the queues
over AMQP on loopback beside its one `rabbitmqctl cluster_status`; the table takes the first
node that could read them. Healthy: every queue IDLE, or FLOWING while its pool works. With
qc-m1's node stopped (the first node: its view is lost) and the pool exports stopped, tasks
sent to exports wait: status says NOT CONSUMED, names the queue, its pool and the host that
should run it, and exits 1; `--json` carries it. The counts are checked against RabbitMQ
itself (rabbitmqctl on a node that runs). Each test can run alone: the one that stops a node
and a pool starts them again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, Project, pools_cluster, wait_for
from .test_queues import queue_rows

HOSTS = ("qc-m1", "qc-m2", "qc-m3")
PYTHON = "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python"


class Cluster:
    def __init__(self, fleet, project: Project, hosts: dict):
        self.fleet, self.project, self.hosts = fleet, project, hosts

    def _listed(self, queue: str, node: str, *fields: str) -> tuple | None:
        """FIELDS of the queue as RabbitMQ itself lists them on NODE (independent of fab); None while
        the node cannot tell (a quorum queue electing its leader). A queue the answer leaves out is
        not known to be empty (on a loaded machine a queue whose leader does not answer in time is
        left out): None as well."""
        out = self.fleet.exec(self.hosts[node], "timeout 60 rabbitmqctl -q list_queues -p demo_proj name "
                                                f"{' '.join(fields)} --formatter json", check=False)
        try:
            found = {q["name"]: tuple(q[f] for f in fields) for q in json.loads(out.stdout)}
        except (ValueError, TypeError, KeyError):
            return None
        value = found.get(queue)
        return value if value is not None and all(isinstance(v, int) for v in value) else None

    def messages(self, queue: str, node: str = "qc-m2") -> tuple[int, int] | None:
        """The queue's (ready, unacknowledged) messages."""
        return self._listed(queue, node, "messages_ready", "messages_unacknowledged")

    def consumers(self, queue: str, node: str = "qc-m2") -> int | None:
        """The queue's consumers as RabbitMQ counts them."""
        counted = self._listed(queue, node, "consumers")
        return counted[0] if counted else None

    def ready(self, queue: str) -> int | None:
        counts = self.messages(queue)
        return counts[0] if counts else None

    def fab_json(self, *args: str) -> subprocess.CompletedProcess:
        """`fab ARGS --json`, its stdout apart (the recap and the rest go to stderr)."""
        command = [str(Path(sys.executable).parent / "fab"), "-r", str(ROOT), "-S", str(self.fleet.ssh_config_path),
                   *args, "--json"]
        env = {**os.environ, "FABCELERY_INVENTORY": str(self.project.inventory_path)}
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    def send(self, queue: str, count: int, task: str = "add", args: str = "[1, 2]", host: str = "qc-m2") -> None:
        """COUNT tasks into QUEUE with the project's own app on HOST, without waiting for them."""
        self.fleet.exec(self.hosts[host], f"{PYTHON} -c 'from demo_proj.celery import app\n"
                                          f"for _ in range({count}): app.send_task(\"demo_proj.tasks.{task}\", "
                                          f"args={args}, queue=\"{queue}\")'")


@pytest.fixture(scope="module")
def cluster(fleet, tmp_path_factory):
    with pools_cluster(fleet, tmp_path_factory, HOSTS) as (project, hosts):
        yield Cluster(fleet, project, hosts)


def test_a_healthy_cluster_shows_every_queue_of_its_pools_idle_with_rabbitmqs_consumers_and_exits_0(cluster):
    run = cluster.project.fab("status")
    assert run.returncode == 0, run.output
    rows = queue_rows(run.output)
    assert list(rows) == ["celery", "exports", "bulk"], run.output
    assert rows["exports"][1:] == ["0", "1", "(exports@qc-m2)", "IDLE"], run.output
    assert rows["bulk"][1:] == ["0", "1", "(exports@qc-m2)", "IDLE"], run.output
    assert rows["celery"][2:4] == ["1", "(celery@qc-m1)"], run.output
    # a passive queue.declare does not tell the unacknowledged messages: no UNACKED column
    assert "taken and not yet acknowledged (all queues): ?" in run.output


def test_a_queue_with_waiting_tasks_and_a_running_pool_is_flowing_on_the_cluster(cluster):
    cluster.send("bulk", 4, task="sleep_then_return", args='[4, "x"]')   # one at a time: 16 s of work
    run = cluster.project.fab("status")
    assert run.returncode == 0, run.output
    row = queue_rows(run.output)["bulk"]
    assert int(row[1]) >= 1 and row[2:] == ["1", "(exports@qc-m2)", "FLOWING"], run.output
    # every task done: none waits, none taken and not yet acknowledged (nothing left for the next test)
    assert wait_for(lambda: cluster.messages("bulk") == (0, 0), timeout=90, interval=2), cluster.messages("bulk")


def test_with_a_node_down_a_stopped_pools_queue_with_messages_is_not_consumed_naming_it_and_exits_1(cluster):
    fleet, hosts, project = cluster.fleet, cluster.hosts, cluster.project
    try:
        fleet.exec(hosts["qc-m1"], "systemctl stop rabbitmq-server")
        # Seen twice when the flowing test ran before this one: just after qc-m1 stops, RabbitMQ counts
        # again in bulk 3 of the 4 messages that test's pool had taken and acknowledged 10-20 s before
        # (bulk (0, 0) before the stop, (2, 1) after it; cause not found, reported on the issue).
        # The pool still runs: let it take them before it is stopped, so that bulk is IDLE below.
        assert wait_for(lambda: cluster.messages("bulk") == (0, 0), timeout=90, interval=2), cluster.messages("bulk")
        stop = project.fab("stop-celery", "--pool", "exports")
        assert stop.returncode == 0, stop.output
        cluster.send("exports", 3)
        # RabbitMQ itself, on a node that runs: the three wait (once the queue's leader is elected)
        assert wait_for(lambda: cluster.ready("exports") == 3, timeout=60, interval=2), cluster.ready("exports")
        # qc-m1's worker reconnects to a node that runs (seconds; longer on a loaded machine): status is
        # to show RabbitMQ's count once it has, so wait for RabbitMQ to count it
        assert wait_for(lambda: cluster.consumers("celery") == 1, timeout=60, interval=2), cluster.consumers("celery")
        run = project.fab("status")
        assert run.returncode == 1, run.output
        assert re.search(r"^qc-m1\s+rabbitmq-server\s+DOWN\s", run.output, re.M), run.output
        assert re.search(r"^exports\s+3\s+-\s+0\s+NOT CONSUMED\s+messages wait and no worker consumes them: "
                         r"start exports@qc-m2 \(fab start-celery\)$", run.output, re.M), run.output
        assert queue_rows(run.output)["bulk"][1:] == ["0", "0", "IDLE"], run.output
        assert queue_rows(run.output)["celery"][2:4] == ["1", "(celery@qc-m1)"], run.output  # failed over
        done = cluster.fab_json("status")
        assert done.returncode == 1, done.stdout + done.stderr
        document = json.loads(done.stdout)
        assert document["ok"] is False
        exports = next(q for q in document["queues"]["queues"] if q["name"] == "exports")
        assert exports == {"name": "exports", "waiting": 3, "oldest_waiting_seconds": None, "unacked": None,
                           "consumers": 0, "not_taking": [], "consumed_by": [], "expected": ["exports@qc-m2"],
                           "state": "NOT CONSUMED",
                           "detail": "messages wait and no worker consumes them: "
                                     "start exports@qc-m2 (fab start-celery)",
                           "ok": False}
    finally:
        fleet.exec(hosts["qc-m1"], "systemctl start rabbitmq-server")
        start = project.fab("start-celery", "--pool", "exports")
        assert start.returncode == 0, start.output
    assert wait_for(lambda: cluster.messages("exports") == (0, 0), timeout=90, interval=2), \
        "the pool did not drain its queue"
    deadline = time.monotonic() + 120
    expected = ["0", "1", "(exports@qc-m2)", "IDLE"]
    # the node back in the cluster, the workers consuming: all well again. Exit 0 alone is not
    # it: idle queues pass with no consumer, and just after qc-m1's start RabbitMQ counted 0
    # consumers on every queue for a moment (seen in a fresh make test)
    while True:
        run = project.fab("status")
        if (run.returncode == 0 and queue_rows(run.output).get("exports", [])[1:] == expected) \
                or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert run.returncode == 0, run.output
    assert queue_rows(run.output)["exports"][1:] == expected, run.output


def test_a_frozen_worker_makes_its_queue_not_consumed_on_the_cluster_and_its_row_says_frozen(cluster):
    # the stall rule on a cluster: each node keeps its history of the queues it reads over AMQP
    # (ready messages only: the free-slot part needs the messages held, which AMQP does not tell)
    fleet, host, project = cluster.fleet, cluster.hosts["qc-m2"], cluster.project
    pid = int(fleet.exec(host, "pgrep -f -o -- '--hostname=exports@'").stdout.split()[0])
    project.data["status"] = {"stalled_after": 5}
    project.write()
    fleet.exec(host, f"kill -STOP {pid}")
    try:
        cluster.send("exports", 3)
        # RabbitMQ may push one (the prefetch) to the frozen consumer: it waits unacknowledged
        assert wait_for(lambda: sum(cluster.messages("exports") or (0,)) == 3, timeout=60, interval=2), \
            cluster.messages("exports")
        first = project.fab("status")
        # seen frozen for less than stalled_after: FLOWING (a consumer is registered), not yet a stall
        assert queue_rows(first.output)["exports"][2:] == ["1", "(exports@qc-m2)", "FLOWING"], first.output
        time.sleep(6)
        run = project.fab("status")
        assert run.returncode == 1, run.output
        row = next(line for line in run.output.splitlines() if line.startswith("exports ") and "CONSUMED" in line)
        assert queue_rows(run.output)["exports"][2:5] == ["1", "(exports@qc-m2)", "NOT"], run.output
        assert "messages wait and the main process of exports@qc-m2 has been stopped (frozen)" in row, run.output
        assert re.search(rf"^qc-m2\s+exports\s+FROZEN\s+{pid}\s.*main process {pid} is stopped \(SIGSTOP\)",
                         run.output, re.M), run.output
        # RabbitMQ still counts its consumer; the canary finds that it takes nothing
        check = project.fab("check", "--timeout", "5")
        assert check.returncode == 1, check.output
        assert "fab check: 2 of 3 queues failed: exports (not taken), bulk (not taken)" in check.output, check.output
    finally:
        fleet.exec(host, f"kill -CONT {pid}")
        del project.data["status"]
        project.write()
    assert wait_for(lambda: cluster.messages("exports") == (0, 0), timeout=90, interval=2), cluster.messages("exports")
    after = project.fab("status")
    assert after.returncode == 0, after.output


def test_fab_check_json_gives_per_queue_the_pool_and_node_that_took_its_canary_and_the_round_trip(cluster):
    done = cluster.fab_json("check", "--timeout", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["ok"] is True and document["from"] == "qc-m1" and document["error"] is None
    assert [(q["queue"], q["pools"], q["node"], q["pool"], q["state"], q["ok"]) for q in document["queues"]] == [
        ("celery", ["celery"], "celery@qc-m1", "celery", "OK", True),
        ("exports", ["exports"], "exports@qc-m2", "exports", "OK", True),
        ("bulk", ["exports"], "exports@qc-m2", "exports", "OK", True)]
    assert all(isinstance(q["round_trip_ms"], int) and q["round_trip_ms"] >= 0 for q in document["queues"])
    assert "QUEUE" not in done.stdout and "RECAP" in done.stderr
