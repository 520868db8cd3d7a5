"""The watchdog (celery.watchdog, tasks/watchdog.py): a systemd timer on the worker host runs the
stall rule of `fab status` as the project user and gives a stalled pool a warm restart.
Redis, on Debian 12 and 13 (the watchdog's figures of a RabbitMQ broker: its frozen rule only,
untested here).

wd-a runs the broker, beat and two pools: `celery` (queue celery, one slot, prefetch 1: the busy
pool) and `exports` (queue exports, one slot: the pool frozen with SIGSTOP). A short
stalled_after and a short timer period; every bound below is derived from them.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from .conftest import Project, install_example_project, wait_for
from .snapshots import start_deployed

HOST = "wd-a"
SUITES = ("bookworm", "trixie")
STALLED_AFTER = 20
INTERVAL = 5
# what a restart itself takes: the warm shutdown of an idle worker and the new one's start
# (supervisor's startsecs, the worker's imports), generous on a shared machine
RESTART = 20
# freeze -> seen frozen (one period) -> stalled_after -> the next check (one period) -> restarted
BOUND = INTERVAL + STALLED_AFTER + INTERVAL + RESTART
PASSWORD_FILE = "/var/lib/fabcelery/demo_proj/broker-password"
PYTHON = "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python"
TIMER = "demo_proj-watchdog.timer"
SERVICE = "/etc/systemd/system/demo_proj-watchdog.service"
TIMER_FILE = f"/etc/systemd/system/{TIMER}"
SESSIONS = "journalctl -q -u ssh --no-pager | grep -c 'Accepted publickey' || true"


class Host:
    def __init__(self, fleet, project: Project, name: str = HOST):
        self.fleet, self.project, self.name = fleet, project, name

    def sh(self, command: str) -> str:
        return self.fleet.exec(self.name, command).stdout

    def send(self, queue: str, count: int, task: str = "add", args: str = "[1, 2]") -> None:
        self.sh(f"{PYTHON} -c 'from demo_proj.celery import app\n"
                f"for _ in range({count}): app.send_task(\"demo_proj.tasks.{task}\", args={args}, "
                f"queue=\"{queue}\")'")

    def redis_cli(self, command: str) -> str:
        """redis-cli as the project's Redis user (the command: its arguments, and any pipe after them)."""
        return self.sh(f'REDISCLI_AUTH="$(cat {PASSWORD_FILE})" redis-cli --user demo_proj {command}')

    def llen(self, queue: str) -> int:
        return int(self.redis_cli(f"LLEN demo_proj:{queue}").strip())

    def waiting(self, queue: str, task: str) -> int:
        """How many messages of `task` wait in the queue's list (each names its task in its headers)."""
        return int(self.redis_cli(f"LRANGE demo_proj:{queue} 0 -1 | grep -c -F demo_proj.tasks.{task} || true")
                   .strip() or 0)

    def pid(self, program: str) -> int | None:
        out = self.sh(f"pgrep -f -o -- '--hostname={program}@' || true").strip()
        return int(out) if out.isdigit() else None

    def succeeded(self, program: str) -> int:
        log = "/var/log/celery/demo_proj-worker.log" if program == "celery" else \
            f"/var/log/celery/demo_proj-worker-{program}.log"
        return int(self.sh(f"grep -c 'succeeded in' {log} || true").strip() or 0)

    def timer(self) -> str:
        return self.sh(f"systemctl is-active {TIMER} || true").strip()


# the release in the id: the two hosts are two units of work
@pytest.fixture(scope="module", params=SUITES, ids=SUITES)
def watched(request, fleet, tmp_path_factory):
    """From the snapshot of a deployed Redis host (tests/integration/snapshots.py): what is tested
    is the watchdog on a deployed host, which the module's deploy adds with its pools (a day-two
    deploy). A first deploy with the watchdog on stays tested on a bare host (wd-b, below)."""
    host = start_deployed(fleet, HOST, suite=request.param, kind="broker")
    project = Project(fleet, tmp_path_factory.mktemp("watchdog"), {HOST: {"roles": ["broker", "worker", "beat"]}})
    project.data["celery"]["watchdog"] = {"stalled_after": STALLED_AFTER, "interval": INTERVAL}
    project.data["celery"]["pools"] = {"celery": {"queues": ["celery"], "concurrency": 1, "prefetch_multiplier": 1},
                                       "exports": {"queues": ["exports"], "concurrency": 1}}
    project.write()
    run = project.fab("deploy")
    assert run.returncode == 0, run.output
    yield Host(fleet, project)
    fleet.remove(host)


def test_the_timer_runs_the_check_as_the_project_user(watched):
    assert watched.timer() == "active"
    unit = watched.sh(f"cat {SERVICE}")
    assert "User=arches" in unit and "Type=oneshot" in unit
    # it ran, and what it keeps is the project user's
    assert wait_for(lambda: watched.sh("stat -c %U /var/lib/celery/demo_proj/watchdog-state.json 2>/dev/null "
                                       "|| true").strip() == "arches", timeout=3 * INTERVAL)
    assert "Result=success" in watched.sh("systemctl show -p Result demo_proj-watchdog.service")


def test_a_frozen_worker_with_tasks_waiting_is_restarted_and_they_run_and_status_shows_it(watched):
    pid = watched.pid("exports")
    done = watched.succeeded("exports")
    watched.sh(f"kill -STOP {pid}")
    frozen_at = time.monotonic()
    try:
        watched.send("exports", 3)
        # Redis pops for a BRPOP the frozen worker sent before it stopped: one message may sit in
        # its socket (taken from the list, not yet held), the others wait
        assert watched.llen("exports") >= 2
        assert wait_for(lambda: watched.pid("exports") not in (None, pid), timeout=BOUND), \
            watched.sh("journalctl -q --no-pager -t demo_proj-watchdog | tail -20")
        took = time.monotonic() - frozen_at
        # not before the rule allows it: frozen for stalled_after
        assert took >= STALLED_AFTER, took
    finally:
        watched.sh(f"kill -CONT {pid} 2>/dev/null || true")
    # the waiting tasks run, on the new worker
    assert wait_for(lambda: watched.llen("exports") == 0 and watched.succeeded("exports") >= done + 3, timeout=60)
    said = rf"warm restart of exports \(pid {pid}\): stalled: exports: .*stopped \(frozen\)"
    journal = "journalctl -q --no-pager -t demo_proj-watchdog"
    assert wait_for(lambda: re.search(said, watched.sh(journal)), timeout=10), watched.sh(journal)
    log = watched.sh("cat /var/log/celery/demo_proj-worker-exports.log")
    assert f"fabcelery-watchdog] warm restart of exports (pid {pid})" in log
    # the new worker RUNNING (past supervisor's startsecs: a moment after its pid is there)
    runs = []
    assert wait_for(lambda: runs.append(watched.project.fab("status")) or runs[-1].returncode == 0, timeout=60), \
        runs[-1].output
    run = runs[-1]
    row = next(line for line in run.output.splitlines() if re.match(rf"{HOST}\s+exports\s", line))
    assert "last watchdog restart 20" in row and "stopped (frozen)" in row, run.output
    assert "last watchdog restart" not in next(line for line in run.output.splitlines()
                                               if re.match(rf"{HOST}\s+celery\s", line))


def test_a_pool_busy_with_long_tasks_and_a_backlog_is_not_restarted(watched):
    pid = watched.pid("celery")
    # one slot, prefetch 1: one runs, one is held, the others wait, for the whole window and beyond
    seconds = BOUND // 2 + 15    # the third task starts (the last is held) after 2 x seconds > BOUND
    watched.send("celery", 4, "sleep_then_return", f"[{seconds}, 1]")
    # counted by task: beat's heartbeat (every 5 s, queue celery) queues behind them
    assert wait_for(lambda: 1 <= watched.waiting("celery", "sleep_then_return") <= 2, timeout=30), (
        watched.llen("celery"), watched.redis_cli("HLEN demo_proj:unacked"),
        watched.sh("/opt/arches/venv/bin/pip list 2>/dev/null | grep -iE 'celery|kombu|redis'"),
        watched.sh("tail -n 20 /var/log/celery/demo_proj-worker.log"))
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        assert watched.pid("celery") == pid
        time.sleep(INTERVAL)
    assert watched.waiting("celery", "sleep_then_return") >= 1          # a backlog waited all along
    state = json.loads(watched.sh("cat /var/lib/celery/demo_proj/watchdog-state.json"))
    assert "celery" not in state.get("restarts", {}), state
    assert wait_for(lambda: watched.waiting("celery", "sleep_then_return") == 0, timeout=4 * seconds)
    assert watched.pid("celery") == pid


def test_a_second_deploy_with_the_watchdog_on_changes_nothing_over_one_login(watched):
    before = int(watched.sh(SESSIONS))
    run = watched.project.fab("deploy")
    assert run.returncode == 0, run.output
    assert run.recap()[HOST] == {"ok": 7, "changed": 0, "failed": 0}, run.output
    time.sleep(1)
    assert int(watched.sh(SESSIONS)) == before + 1


def test_dry_run_shows_the_timer_and_changes_nothing(watched):
    project = watched.project
    before = watched.sh(f"cat {TIMER_FILE}")
    project.data["celery"]["watchdog"]["interval"] = INTERVAL + 1
    project.write()
    try:
        run = project.fab("deploy", "--dry-run")
    finally:
        project.data["celery"]["watchdog"]["interval"] = INTERVAL
        project.write()
    assert run.returncode == 0, run.output
    assert f"+OnUnitActiveSec={INTERVAL + 1}" in run.output and f"-OnUnitActiveSec={INTERVAL}" in run.output
    assert TIMER in run.output
    assert watched.sh(f"cat {TIMER_FILE}") == before


def test_turning_the_key_off_removes_the_timer_and_undeploy_removes_it(fleet, tmp_path_factory):
    name = "wd-b"
    host = fleet.start(name, SUITES[0])
    try:
        install_example_project(fleet, host)
        project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
        project.data["celery"]["watchdog"] = {"stalled_after": STALLED_AFTER, "interval": INTERVAL}
        project.write()
        check = Host(fleet, project, name)
        assert project.fab("deploy").returncode == 0
        assert check.timer() == "active"
        del project.data["celery"]["watchdog"]
        project.write()
        off = project.fab("deploy")
        assert off.returncode == 0, off.output
        assert check.timer() != "active"
        assert check.sh(f"ls {SERVICE} {TIMER_FILE} /var/lib/fabcelery/demo_proj/watchdog.py 2>&1 || true").count(
            "No such file") == 3
        project.data["celery"]["watchdog"] = {"stalled_after": STALLED_AFTER, "interval": INTERVAL}
        project.write()
        assert project.fab("deploy").returncode == 0
        assert check.timer() == "active"
        gone = project.fab("undeploy")
        assert gone.returncode == 0, gone.output
        assert check.timer() != "active"
        assert "demo_proj-watchdog" not in check.sh("systemctl list-timers --all --no-pager")
        assert check.sh(f"ls {SERVICE} {TIMER_FILE} 2>&1 || true").count("No such file") == 2
    finally:
        fleet.remove(host)
