"""Is work flowing? `fab status`'s queue rows on a real host: Redis on Debian 12, RabbitMQ on
Debian 13.

qu-a runs the broker, beat and two pools: celery (queue celery) and exports (queues exports and
bulk, one task at a time). Tasks sent to `exports` while its pool is stopped wait there:
status says NOT CONSUMED with their count and exits 1; started again, the pool drains the
queue and status says IDLE and exits 0. The counts are checked against the broker itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, Project, wait_for
from .snapshots import start_deployed

HOST = "qu-a"
KINDS = {"redis": "bookworm", "rabbitmq": "trixie"}
UNACKED = {"redis": None, "rabbitmq": 0}      # Redis keeps one unacked hash for all queues
PASSWORD_FILE = "/var/lib/fabcelery/demo_proj/broker-password"
PYTHON = "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python"


class Queues:
    def __init__(self, fleet, project: Project, kind: str):
        self.fleet, self.project, self.kind = fleet, project, kind

    def llen(self, queue: str) -> int:
        """The messages waiting in the queue, asked of the broker itself (independent of fab):
        Redis as the project's account, RabbitMQ with rabbitmqctl."""
        if self.kind == "redis":
            out = self.fleet.exec(HOST, f'REDISCLI_AUTH="$(cat {PASSWORD_FILE})" redis-cli --user demo_proj '
                                        f"LLEN demo_proj:{queue}").stdout
            return int(out.strip())
        out = self.fleet.exec(HOST, "rabbitmqctl -q list_queues -p demo_proj name messages_ready").stdout
        counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if len(line.split()) == 2
                  and line.split()[1].isdigit()}
        return counts.get(queue, 0)

    def send(self, queue: str, count: int, task: str = "add", args: str = "[1, 2]") -> None:
        """COUNT tasks into QUEUE with the project's own app, without waiting for them."""
        self.fleet.exec(HOST, f"{PYTHON} -c 'from demo_proj.celery import app\n"
                              f"for _ in range({count}): app.send_task(\"demo_proj.tasks.{task}\", "
                              f"args={args}, queue=\"{queue}\")'")

    def status(self, *args: str):
        return self.project.fab("status", *args)

    def json_status(self) -> subprocess.CompletedProcess:
        """`fab status --json`, its stdout apart (the recap goes to stderr)."""
        command = [str(Path(sys.executable).parent / "fab"), "-r", str(ROOT), "-S", str(self.fleet.ssh_config_path),
                   "status", "--json"]
        env = {**os.environ, "FABCELERY_INVENTORY": str(self.project.inventory_path)}
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


UNACKED_COLUMN: list[bool] = []


def queue_rows(output: str) -> dict[str, list[str]]:
    """The queue table: QUEUE -> its cells (STATE is two words when NOT CONSUMED), without
    the UNACKED column (RabbitMQ's), checked apart."""
    table, inside = {}, False
    UNACKED_COLUMN.clear()
    for line in output.splitlines():
        if line.startswith("QUEUE "):
            inside = True
            if "UNACKED" in line.split():
                UNACKED_COLUMN.append(True)
            continue
        if inside and line.strip() and not line.startswith("taken and not yet"):
            cells = line.split()
            if UNACKED_COLUMN:
                del cells[3]
            del cells[2]        # OLDEST (tests/integration/test_stall.py)
            table[cells[0]] = cells
        elif inside:
            inside = False
    return table


@pytest.fixture(scope="module", params=list(KINDS), ids=[f"{k}-{v}" for k, v in KINDS.items()])
def queues(request, fleet, tmp_path_factory):
    kind = request.param
    # from the snapshot of a deployed Redis or RabbitMQ host (what is tested is status's queue rows
    # on a deployed host, not the first deploy)
    host = start_deployed(fleet, HOST, suite=KINDS[kind], kind="broker" if kind == "redis" else "rabbitmq")
    project = Project(fleet, tmp_path_factory.mktemp("queues"), {
        HOST: {"roles": ["broker", "worker", "beat"]},
    })
    project.data["broker"]["kind"] = kind
    project.data["celery"]["pools"] = {"celery": {"queues": ["celery"], "concurrency": 2},
                                       "exports": {"queues": ["exports", "bulk"], "concurrency": 1,
                                                   "prefetch_multiplier": 1}}
    project.write()
    deploy = project.fab("deploy")
    assert deploy.returncode == 0, deploy.output
    yield Queues(fleet, project, kind)
    fleet.remove(host)


def test_a_healthy_host_shows_every_queue_of_its_pools_idle_and_exits_0(queues):
    run = queues.status()
    assert run.returncode == 0, run.output
    rows = queue_rows(run.output)
    assert list(rows) == ["celery", "exports", "bulk"]
    assert rows["exports"][1:] == ["0", "1", "(exports@qu-a)", "IDLE"]
    assert rows["bulk"][1:] == ["0", "1", "(exports@qu-a)", "IDLE"]
    assert rows["celery"][2:4] == ["1", "(celery@qu-a)"]         # beat's heartbeat may be waiting a moment


def test_tasks_for_a_stopped_pool_make_its_queue_not_consumed_with_the_count_and_exit_1(queues):
    stop = queues.project.fab("stop-celery", "--pool", "exports")
    assert stop.returncode == 0, stop.output
    queues.send("exports", 3)
    assert queues.llen("exports") == 3
    run = queues.status()
    assert run.returncode == 1, run.output
    row = queue_rows(run.output)["exports"]
    assert row[1:5] == ["3", "0", "NOT", "CONSUMED"], row
    assert re.search(r"^exports\s+3\s+(0s|-)\s+(0\s+)?0\s+NOT CONSUMED\s+messages wait and no worker consumes them: "
                     r"start exports@qu-a \(fab start-celery\)$", run.output, re.M), run.output
    assert queue_rows(run.output)["bulk"][1:] == ["0", "0", "IDLE"]   # nothing waits there: no alarm
    if queues.kind == "rabbitmq":    # RabbitMQ's own count of consumers: none on exports
        assert re.search(r"^exports\s+3\s+-\s+0\s+0\s+NOT CONSUMED", run.output, re.M), run.output
    done = queues.json_status()
    assert done.returncode == 1, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["ok"] is False
    exports = next(q for q in document["queues"]["queues"] if q["name"] == "exports")
    oldest = exports.pop("oldest_waiting_seconds")    # Redis: seen waiting by the status runs; RabbitMQ: not shown
    assert (oldest is None) if queues.kind == "rabbitmq" else (isinstance(oldest, int) and oldest >= 0), oldest
    assert exports == {"name": "exports", "waiting": 3, "unacked": UNACKED[queues.kind], "consumers": 0,
                       "not_taking": [],
                       "consumed_by": [], "expected": ["exports@qu-a"], "state": "NOT CONSUMED",
                       "detail": "messages wait and no worker consumes them: start exports@qu-a (fab start-celery)",
                       "ok": False}


def test_started_again_the_pool_drains_its_queue_and_status_says_idle_and_exits_0(queues):
    start = queues.project.fab("start-celery", "--pool", "exports")
    assert start.returncode == 0, start.output
    assert wait_for(lambda: queues.llen("exports") == 0, timeout=60), "the pool did not drain its queue"
    run = queues.status()
    assert run.returncode == 0, run.output
    assert queue_rows(run.output)["exports"][1:] == ["0", "1", "(exports@qu-a)", "IDLE"]


def test_a_queue_with_waiting_tasks_and_a_running_pool_is_flowing(queues):
    queues.send("bulk", 4, task="sleep_then_return", args='[4, "x"]')   # one at a time: 16 s of work
    run = queues.status()
    assert run.returncode == 0, run.output
    row = queue_rows(run.output)["bulk"]
    assert int(row[1]) >= 1 and row[2:] == ["1", "(exports@qu-a)", "FLOWING"], row
    assert wait_for(lambda: queues.llen("bulk") == 0, timeout=60)
