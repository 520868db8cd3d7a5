"""A server deployed by fabcelery before pools and log rotation, deployed again with this
version: the rotation (logrotate and its file) is added, the program files move out of
/etc/supervisor/conf.d (beat's unchanged), and no program restarts but the worker: the demo
project's Celery (5.6.3) hands running tasks back at the end of a warm shutdown, so the
worker's file gains FABCELERY_HANDBACK_AFTER and 30 s more stopwaitsecs, and the settings
block the lines only workers run (tasks/shutdown.py): one warm restart of the worker; beat
and supervisord keep running."""

from __future__ import annotations

import pytest

from .conftest import Project, earlier_fabcelery, install_example_project, server

# The last commit before pools and log rotation (the branch point of issue 12).
# main just before pools and log rotation. With RabbitMQ: the Redis accounts that came
# after it (issue 10) change a Redis project's settings, and so restart its programs.
BEFORE_POOLS = "49264136b6872bcd9eb4eb80bb3d0be827675ef3"
CTL = "runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c /etc/supervisor/demo_proj-supervisord.conf"


@pytest.fixture(scope="module")
def before_pools(fleet, tmp_path_factory):
    tree = earlier_fabcelery(BEFORE_POOLS, tmp_path_factory)
    host = fleet.start("up13", suite="trixie")
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("up13"), {"up13": {"roles": ["broker", "worker", "beat"]}})
    project.data["broker"] = {"kind": "rabbitmq"}
    project.write()
    old = project.fab("-H", "up13", "deploy", root=tree)
    assert old.returncode == 0, old.output
    yield {"fleet": fleet, "host": host, "project": project, "server": server(fleet, host)}
    fleet.remove(host)


def pids(srv) -> dict[str, int]:
    out = srv.check_output(f"LC_ALL=C {CTL} status")
    return {p[0]: int(p[3].rstrip(",")) for p in (line.split() for line in out.splitlines())
            if len(p) >= 4 and p[1] == "RUNNING"}


def test_the_first_deploy_with_pools_adds_log_rotation_moves_the_programs_and_restarts_only_the_worker(before_pools):
    srv, project = before_pools["server"], before_pools["project"]
    assert not srv.file("/etc/logrotate.d/fabcelery-demo_proj").exists
    programs = {f"/etc/supervisor/conf.d/demo_proj-{p}.conf": f"/etc/supervisor/demo_proj-programs.d/demo_proj-{p}.conf"
                for p in ("celeryd", "celerybeat")}
    files = ["/etc/systemd/system/demo_proj-supervisord.service", "/opt/arches/demo_proj/demo_proj/settings_local.py"]
    sums = {path: srv.file(path).sha256sum for path in [*files, *programs]}
    before = pids(srv)
    supervisord = srv.check_output("cat /run/demo_proj-supervisor/supervisord.pid")
    run = project.fab("-H", "up13", "deploy")
    assert run.returncode == 0, run.output
    assert "up13  system       install logrotate\n" in run.output
    # the unit: its TimeoutStopSec grows with the worker's stopwaitsecs (daemon-reload only)
    assert ("up13  configs      install demo_proj-supervisord.conf, demo_proj-celeryd.conf, demo_proj-celerybeat.conf, "
            "demo_proj-supervisord.service, fabcelery-demo_proj, settings_local.py\n") in run.output
    assert "up13  supervisord  systemctl daemon-reload\n" in run.output
    assert ("up13  supervisord  reread and update (celery, program files moved out of /etc/supervisor/conf.d)\n"
            in run.output)
    assert "settings_local.py changed" not in run.output              # beat does not run the hand-back
    assert run.recap()["up13"] == {"ok": 7, "changed": 3, "failed": 0}       # system, configs, supervisord
    after = pids(srv)
    assert set(before) == {"celery", "celerybeat"} and after["celerybeat"] == before["celerybeat"]
    assert after["celery"] != before["celery"]
    before = after
    assert srv.check_output("cat /run/demo_proj-supervisor/supervisord.pid") == supervisord
    # beat's program, byte for byte, where only the project's supervisord looks
    beat = programs["/etc/supervisor/conf.d/demo_proj-celerybeat.conf"]
    assert srv.file(beat).sha256sum == sums["/etc/supervisor/conf.d/demo_proj-celerybeat.conf"]
    worker = srv.file(programs["/etc/supervisor/conf.d/demo_proj-celeryd.conf"]).content_string
    assert ',FABCELERY_HANDBACK_AFTER="60"' in worker and "\nstopwaitsecs=90\n" in worker
    settings = srv.file("/opt/arches/demo_proj/demo_proj/settings_local.py").content_string
    assert "def _fabcelery_handback():" in settings
    assert not any(srv.file(old).exists for old in programs)
    assert srv.file("/etc/logrotate.d/fabcelery-demo_proj").exists
    again = project.fab("-H", "up13", "deploy")
    assert again.recap()["up13"] == {"ok": 7, "changed": 0, "failed": 0}, again.output
    assert pids(srv) == before
