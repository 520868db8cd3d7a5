"""A restart loses no task it could keep (tasks/shutdown.py): with Celery 5.5 or later (the
demo project pins 5.6.3), on Redis (Debian 12) and on RabbitMQ (Debian 13), the worker's warm
shutdown lasts the pool's stopwaitsecs (8 s here); a task still running then is handed back
to the broker by Celery's cold shutdown (acks_late) and runs again, from its start, once its
first run is gone, to its end exactly once; a task that ends within the warm shutdown runs
once. The evidence is the task's own: each run writes its start, a tick each half second and
its end, with its pid, to a file (demo_proj.tasks.handed_back).
"""

from __future__ import annotations

import time
import uuid

import pytest

from .conftest import Project, install_example_project, wait_for

WARM = 8                        # the pool's stopwaitsecs: the warm shutdown's time
GRACE = 30                      # supervisord's stopwaitsecs is WARM + GRACE (tasks/shutdown.py)
LONG, SHORT = 25, 3             # seconds each task runs
CASES = {"redis": "bookworm", "rabbitmq": "trixie"}
WORKER_LOG = "/var/log/celery/demo_proj-worker.log"
CONF = "/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf"
SEND = ("cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python -c "
        "'import sys; from demo_proj.celery import app; "
        "app.send_task(\"demo_proj.tasks.handed_back\", args=[int(sys.argv[1]), sys.argv[2]])' {seconds} {tag}")


@pytest.fixture(scope="module", params=list(CASES), ids=[f"{kind}-{suite}" for kind, suite in CASES.items()])
def deployed(request, fleet, tmp_path_factory):
    kind = request.param
    name = f"sd-{kind[:2]}"
    host = fleet.start(name, suite=CASES[kind])
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    project.data["broker"]["kind"] = kind
    project.data["celery"]["pools"] = {"celery": {"stopwaitsecs": WARM}}
    project.write()
    first = project.fab("deploy")
    if first.returncode != 0:
        why = fleet.exec(host, "journalctl -u demo_proj-supervisord --no-pager | tail -n 30; "
                               "tail -n 30 /var/log/supervisor/demo_proj-supervisord.log", check=False).stdout
        fleet.remove(host)
        pytest.fail(first.output + why)
    yield {"kind": kind, "name": name, "host": host, "fleet": fleet, "project": project}
    fleet.remove(host)


def sh(deployed, command: str) -> str:
    return deployed["fleet"].exec(deployed["host"], command).stdout


def runs(deployed, tag: str) -> list[tuple[float, int, str]]:
    """The task's lines: (time, pid, start|tick|end)."""
    text = sh(deployed, f"cat /home/arches/handback-{tag} 2>/dev/null || true")
    return [(float(t), int(pid), what) for t, pid, what in (line.split() for line in text.splitlines())]


def test_supervisord_waits_for_the_warm_shutdown_and_the_cold_one(deployed):
    conf = sh(deployed, f"cat {CONF}")
    assert f"\nstopwaitsecs={WARM + GRACE}\n" in conf, conf
    # the worker's listener, in its program file, ends its warm shutdown after WARM s
    assert "\n[eventlistener:celery-handback]\n" in conf, conf
    assert f"/etc/supervisor/demo_proj-handback.py celery={WARM}={WORKER_LOG}\n" in conf, conf
    status = sh(deployed, "LC_ALL=C runuser -u arches -- /opt/arches/venv/bin/supervisorctl "
                          "-c /etc/supervisor/demo_proj-supervisord.conf status celery-handback")
    assert " RUNNING " in status, status


def test_a_task_running_past_the_warm_shutdown_is_handed_back_and_runs_to_its_end_once(deployed):
    long, short = f"long-{uuid.uuid4().hex[:6]}", f"short-{uuid.uuid4().hex[:6]}"
    sh(deployed, SEND.format(seconds=LONG, tag=long))
    assert wait_for(lambda: runs(deployed, long), 60), "the long task did not start"
    sh(deployed, SEND.format(seconds=SHORT, tag=short))
    assert wait_for(lambda: runs(deployed, short), 60), "the short task did not start"
    started = time.time()
    restart = deployed["project"].fab("restart-celery")
    took = time.time() - started
    assert restart.returncode == 0, restart.output

    # the first run is cut at the warm shutdown's end, and the task runs again to its end
    assert wait_for(lambda: any(w == "end" for _, _, w in runs(deployed, long)), 90), runs(deployed, long)
    lines = runs(deployed, long)
    starts = [(t, pid) for t, pid, w in lines if w == "start"]
    ends = [(t, pid) for t, pid, w in lines if w == "end"]
    assert len(starts) == 2 and len(ends) == 1, lines
    (first_at, first), (second_at, second) = starts
    assert first != second and ends[0][1] == second, lines
    # never two runs at once: the first run wrote nothing after the second one started
    assert max(t for t, pid, _ in lines if pid == first) < second_at, lines
    # the first run had its warm shutdown (at least WARM s after the restart began), and the
    # second began right after the restart, not after Redis' visibility_timeout
    assert max(t for t, pid, _ in lines if pid == first) >= started + WARM - 1, (started, lines)
    assert second_at - started < WARM + GRACE + 60, (started, lines)

    cut = max(t for t, pid, _ in lines if pid == first)
    print(f"restart took {took:.1f} s; after its start: the first run's last line {cut - started:.1f} s, "
          f"the second run's start {second_at - started:.1f} s, its end {ends[0][0] - started:.1f} s")
    # the short task ended within the warm shutdown: it ran once, to its end
    short_lines = runs(deployed, short)
    assert [w for _, _, w in short_lines if w != "tick"] == ["start", "end"], short_lines

    # the restart waited for the warm shutdown, and not for supervisord's KILL
    assert WARM <= took < WARM + GRACE + 60, took
    log = sh(deployed, f"tail -n 400 {WORKER_LOG}")
    assert f"after {WARM} s of warm shutdown: sent QUIT" in log, log
    assert "Cold shutdown" in log, log
    # a minute later still: nothing ran it again
    time.sleep(5)
    assert runs(deployed, long) == lines
