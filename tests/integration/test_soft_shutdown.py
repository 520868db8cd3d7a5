"""A restart loses no task it could keep (tasks/shutdown.py): with Celery 5.5 or later (the
demo project pins 5.6.3), on Redis (Debian 12) and on RabbitMQ (Debian 13), `fab
restart-celery` gives the worker a warm shutdown of the pool's stopwaitsecs (8 s here); then
the worker sends itself QUIT, and Celery's cold shutdown hands a task still running back to
the broker (acks_late): it runs again, from its start, once its first run is gone, to its end
exactly once. A task that ends within the warm shutdown runs once. No supervisor program is
added. The evidence is the task's own: each run writes its start, a tick each half second and
its end, with its pid, to a file (demo_proj.tasks.handed_back).
"""

from __future__ import annotations

import time
import uuid

import pytest

from .conftest import Project, wait_for
from .snapshots import start_deployed

WARM = 8                        # the pool's stopwaitsecs: the warm shutdown's time
GRACE = 30                      # supervisord's stopwaitsecs is WARM + GRACE (tasks/shutdown.py)
LONG, SHORT = 25, 3             # seconds each task runs
CASES = {"redis": "bookworm", "rabbitmq": "trixie"}
WORKER_LOG = "/var/log/celery/demo_proj-worker.log"
CONF = "/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf"
CTL = ("LC_ALL=C runuser -u arches -- /opt/arches/venv/bin/supervisorctl "
       "-c /etc/supervisor/demo_proj-supervisord.conf")
SEND = ("cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python -c "
        "'import sys; from demo_proj.celery import app; "
        "app.send_task(\"demo_proj.tasks.handed_back\", args=[int(sys.argv[1]), sys.argv[2]])' {seconds} {tag}")


@pytest.fixture(scope="module", params=list(CASES), ids=[f"{kind}-{suite}" for kind, suite in CASES.items()])
def deployed(request, fleet, tmp_path_factory):
    kind = request.param
    name = f"sd-{kind[:2]}"
    # from the snapshot of a deployed Redis or RabbitMQ host (what is tested is the restart, not
    # the first deploy)
    host = start_deployed(fleet, name, suite=CASES[kind], kind="broker" if kind == "redis" else "rabbitmq")
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    project.data["broker"]["kind"] = kind
    project.data["celery"]["pools"] = {"celery": {"stopwaitsecs": WARM}}
    project.write()
    first = project.fab("deploy")
    if first.returncode != 0:
        fleet.remove(host)
        pytest.fail(first.output)
    yield {"kind": kind, "name": name, "host": host, "fleet": fleet, "project": project}
    fleet.remove(host)


def sh(deployed, command: str) -> str:
    return deployed["fleet"].exec(deployed["host"], command).stdout


def runs(deployed, tag: str) -> list[tuple[float, int, str]]:
    """The task's lines: (time, pid, start|tick|end)."""
    text = sh(deployed, f"cat /home/arches/handback-{tag} 2>/dev/null || true")
    return [(float(t), int(pid), what) for t, pid, what in (line.split() for line in text.splitlines())]


def test_supervisord_waits_for_the_warm_shutdown_and_the_cold_one_and_runs_no_program_more(deployed):
    conf = sh(deployed, f"cat {CONF}")
    assert f"\nstopwaitsecs={WARM + GRACE}\n" in conf, conf
    assert f',FABCELERY_HANDBACK_AFTER="{WARM}"' in conf, conf
    status = sh(deployed, f"{CTL} status || true")
    assert sorted(line.split()[0] for line in status.splitlines()) == ["celery", "celerybeat"], status


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
    cut = max(t for t, pid, _ in lines if pid == first)
    assert cut < second_at, lines
    # the first run had its whole warm shutdown (WARM s from the restart's start, its TERM
    # a little later), and was cut well before its end and before supervisord's KILL
    assert started + WARM - 1 <= cut < started + WARM + GRACE, (started, lines)
    # the second run began right after the restart, not after Redis' visibility_timeout
    assert second_at - started < WARM + GRACE + 60, (started, lines)
    print(f"{deployed['kind']}: restart took {took:.1f} s; after its start: the first run's last line "
          f"{cut - started:.1f} s, the second run's start {second_at - started:.1f} s, its end "
          f"{ends[0][0] - started:.1f} s")

    # the short task ended within the warm shutdown: it ran once, to its end
    short_lines = runs(deployed, short)
    assert [w for _, _, w in short_lines if w != "tick"] == ["start", "end"], short_lines

    # the restart waited for the warm shutdown, and not for supervisord's KILL
    assert WARM <= took < WARM + GRACE + 60, took
    log = sh(deployed, f"tail -n 400 {WORKER_LOG}")
    assert f"fabcelery: {WARM} s of warm shutdown are up: QUIT" in log, log
    assert "Cold shutdown" in log, log
    # a while later still: nothing ran it again
    time.sleep(5)
    assert runs(deployed, long) == lines
