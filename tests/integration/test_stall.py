"""A worker that runs and does not take its queue's tasks: `fab status` says NOT CONSUMED once
the queue's messages have waited status.stalled_after seconds (5 here) with no worker taking
them, and never while a fleet works down a backlog or a pool is busy with long tasks.
Redis on Debian 12, RabbitMQ on Debian 13 (tasks/scripts/stall_rule.py).

st-a runs the broker, beat and two pools: celery (queue celery, two slots) and exports
(queues exports and bulk, one slot, prefetch 1). (a) a pool stopped: tests/integration/test_queues.py.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from .conftest import Project, install_example_project, wait_for
from .snapshots import start_deployed
from .test_queues import Queues

HOST = "st-a"
KINDS = {"redis": "bookworm", "rabbitmq": "trixie"}
STALLED_AFTER = 5


class Stall(Queues):
    def send(self, queue: str, count: int, task: str = "add", args: str = "[1, 2]") -> None:
        self.fleet.exec(HOST, f"cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python -c "
                              f"'from demo_proj.celery import app\n"
                              f"for _ in range({count}): app.send_task(\"demo_proj.tasks.{task}\", "
                              f"args={args}, queue=\"{queue}\")'")

    def llen(self, queue: str) -> int:
        if self.kind == "redis":
            out = self.fleet.exec(HOST, 'REDISCLI_AUTH="$(cat /var/lib/fabcelery/demo_proj/broker-password)" '
                                        f"redis-cli --user demo_proj LLEN demo_proj:{queue}").stdout
            return int(out.strip())
        out = self.fleet.exec(HOST, "rabbitmqctl -q list_queues -p demo_proj name messages_ready").stdout
        counts = {p[0]: int(p[1]) for p in (line.split() for line in out.splitlines()) if len(p) == 2
                  and p[1].isdigit()}
        return counts.get(queue, 0)

    def pid(self, program: str) -> int:
        out = self.fleet.exec(HOST, f"cat /proc/$(pgrep -f -o -- '--hostname={program}@')/stat").stdout
        return int(out.split()[0])


def queue_row(output: str, queue: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(queue + " "))


def stalled(output: str) -> list[str]:
    """The rows of the queue table that say NOT CONSUMED (the recap's header names the state too)."""
    table = output.split("\nQUEUE ", 1)[1].split("\ntaken and not yet", 1)[0]
    return [line for line in table.splitlines() if "NOT CONSUMED" in line]


def json_not_consumed(queues, queue: str) -> tuple[dict, dict]:
    """`fab status --json` when QUEUE is not consumed: exit 1; (its queue entry, the first host's
    program of that name)."""
    done = queues.json_status()
    assert done.returncode == 1, done.stdout + done.stderr
    document = json.loads(done.stdout)
    return (next(q for q in document["queues"]["queues"] if q["name"] == queue),
            next(p for p in document["hosts"][0]["programs"] if p["name"] == queue))


@pytest.fixture(scope="module", params=list(KINDS), ids=[f"{k}-{v}" for k, v in KINDS.items()])
def stall(request, fleet, tmp_path_factory):
    kind = request.param
    # from the snapshot of a deployed Redis or RabbitMQ host (the module tests day two)
    host = start_deployed(fleet, HOST, suite=KINDS[kind], kind="broker" if kind == "redis" else "rabbitmq")
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("stall"), {HOST: {"roles": ["broker", "worker", "beat"]}})
    project.data["broker"]["kind"] = kind
    project.data["status"] = {"stalled_after": STALLED_AFTER}
    project.data["celery"]["pools"] = {"celery": {"queues": ["celery"], "concurrency": 2},
                                       "exports": {"queues": ["exports", "bulk"], "concurrency": 1,
                                                   "prefetch_multiplier": 1}}
    project.write()
    deploy = project.fab("deploy")
    assert deploy.returncode == 0, deploy.output
    yield Stall(fleet, project, kind)
    fleet.remove(host)


def test_a_frozen_worker_makes_its_queue_not_consumed_after_stalled_after_and_its_row_says_frozen(stall):
    pid = stall.pid("exports")
    stall.fleet.exec(HOST, f"kill -STOP {pid}")
    try:
        stall.send("exports", 3)
        first = stall.status()
        # seen frozen for less than stalled_after: not yet
        assert "NOT CONSUMED" not in queue_row(first.output, "exports"), first.output
        time.sleep(STALLED_AFTER + 1)
        assert stall.llen("exports") >= 1
        run = stall.status()
        assert run.returncode == 1, run.output
        row = queue_row(run.output, "exports")
        assert "NOT CONSUMED" in row and "exports@st-a" in row and "stopped (frozen)" in row, run.output
        assert re.search(rf"^{HOST}\s+exports\s+FROZEN\s+{pid}\s.*main process {pid} is stopped \(SIGSTOP\)",
                         run.output, re.M), run.output
        assert re.search(rf"^{HOST}\s+ok=\d+ changed=0 failed=2\s+\(NOT CONSUMED: exports\)", run.output, re.M), \
            run.output
        exports, program = json_not_consumed(stall, "exports")
        assert exports["state"] == "NOT CONSUMED" and exports["not_taking"] == ["exports@st-a"], exports
        assert program["state"] == "FROZEN" and program["ok"] is False
    finally:
        stall.fleet.exec(HOST, f"kill -CONT {pid}")
    assert wait_for(lambda: stall.llen("exports") == 0, timeout=60), "the thawed worker did not drain its queue"
    after = stall.status()
    assert after.returncode == 0, after.output


def test_a_pool_busy_with_long_tasks_and_a_backlog_is_flowing_not_stalled(stall):
    # one slot, prefetch 1: one task runs, one is held, the rest wait, far longer than stalled_after;
    # a task of 40 s keeps one waiting for at least 40 s after two wait, longer than the loop below
    # with its status runs takes, even on a loaded machine (12 s tasks drained before its end at load 25)
    stall.send("exports", 4, "sleep_then_return", "[40, 1]")
    assert wait_for(lambda: stall.llen("exports") == 2, timeout=30)
    deadline = time.monotonic() + 3 * STALLED_AFTER
    while time.monotonic() < deadline:
        run = stall.status()
        assert run.returncode == 0 and not stalled(run.output), run.output
        time.sleep(2)
    assert "FLOWING" in queue_row(run.output, "exports"), run.output
    assert wait_for(lambda: stall.llen("exports") == 0, timeout=150)


def test_no_false_alarm_while_the_fleet_works_down_a_backlog_with_new_tasks_arriving(stall):
    stall.send("celery", 50, "sleep_then_return", "[1, 1]")
    states = []
    deadline = time.monotonic() + 120
    last = time.monotonic()
    while time.monotonic() < deadline:
        # 2.5 a second arrive, however long a round takes, and the two slots take 2 a second: the
        # backlog stays (6 a round drained it at once when each round took 10 s, at load 25)
        now = time.monotonic()
        stall.send("celery", max(1, round(2.5 * (now - last))), "sleep_then_return", "[1, 1]")
        last = now
        run = stall.status()
        states.append(queue_row(run.output, "celery").split()[:2])
        assert run.returncode == 0 and not stalled(run.output), run.output
        time.sleep(2)
    assert any(int(waiting) > 0 for _, waiting in states), states     # a backlog was there all along
