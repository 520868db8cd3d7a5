"""A fresh Debian server, `fab -H HOST deploy`, and what a deployer then checks by hand.

Runs once on Debian 12 (bookworm) and once on Debian 13 (trixie).
"""

from __future__ import annotations

import json
import re

import pytest

from .conftest import SUITES, Project, install_example_project, server

PROGRAMS = ("celery", "celerybeat")
CONF = "/etc/supervisor/demo_proj-supervisord.conf"
CTL = f"runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c {CONF}"
PASSWORD_FILE = "/var/lib/fabcelery/demo_proj/broker-password"


@pytest.fixture(scope="module", params=list(SUITES))
def deployed(request, fleet, tmp_path_factory):
    """One fresh host per Debian release, deployed once; every test below reads it as the
    first deploy left it, or as its own deploys changed it, and can run alone."""
    suite = request.param
    name = SUITES[suite]
    host = fleet.start(name, suite=suite)
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    first = project.fab("-H", name, "deploy")
    yield {"name": name, "host": host, "project": project, "first": first, "server": server(fleet, host)}
    fleet.remove(host)


def program_pids(srv) -> dict[str, int]:
    out = srv.check_output(f"LC_ALL=C {CTL} status")
    pids = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "RUNNING":
            pids[parts[0]] = int(parts[3].rstrip(","))
    return pids


def send_task(srv, *args: str) -> object:
    out = srv.check_output(
        "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python -m demo_proj.sendtask "
        + " ".join(args)
    )
    return json.loads(out.strip().splitlines()[-1])


def test_first_deploy_succeeds_and_reports_every_step(deployed):
    run, name = deployed["first"], deployed["name"]
    assert run.returncode == 0, run.output
    recap = run.recap()[name]
    assert recap["failed"] == 0 and recap["changed"] >= 5
    for step in ("probe", "system", "broker", "python", "configs", "supervisord", "verify"):
        assert f"{name}  {step}" in run.output
    # before its programs first start, the app is loaded as the worker would and must see the block
    assert re.search(rf"^{name}\s+supervisord\s+check that demo_proj.celery sees the settings of "
                     r"settings_local.py \(loaded as arches\)$", run.output, re.M), run.output


def test_worker_and_beat_run_under_supervisord_started_by_systemd(deployed):
    srv = deployed["server"]
    unit = srv.service("demo_proj-supervisord")
    assert unit.is_enabled and unit.is_running
    assert set(program_pids(srv)) == set(PROGRAMS)


def test_a_task_sent_with_the_projects_own_app_is_executed(deployed):
    srv = deployed["server"]
    assert send_task(srv, "add", "2", "3") == 5
    assert send_task(srv, "whoami")["uid"] == srv.user("arches").uid


def test_celery_processes_do_not_run_as_root(deployed):
    srv = deployed["server"]
    celery = [p for p in srv.process.filter(comm="celery")] or [
        p for p in srv.process.filter() if "bin/celery" in p.args
    ]
    assert len(celery) >= 2  # worker (and its pool) and beat
    assert {p.user for p in celery} == {"arches"}


def test_logs_pid_and_schedule_belong_to_the_project_user(deployed):
    srv = deployed["server"]
    for path in ("/var/log/celery/demo_proj-worker.log", "/var/log/celery/demo_proj-beat.log"):
        f = srv.file(path)
        assert (f.user, f.group, f.mode) == ("arches", "arches", 0o640), path
        assert f.size > 0, path
    assert srv.file("/run/demo_proj-celery/celerybeat.pid").user == "arches"
    assert srv.file("/var/lib/celery/demo_proj/celerybeat-schedule").exists or \
        srv.run("ls /var/lib/celery/demo_proj/celerybeat-schedule*").rc == 0


def test_beat_schedule_fires(deployed):
    srv = deployed["server"]
    # the demo's heartbeat task is due every 5 s; give beat a bounded while
    assert srv.run("for i in $(seq 30); do [ -s /home/arches/heartbeat ] && exit 0; sleep 1; done;"
                   " exit 1").rc == 0


def test_control_socket_is_private(deployed):
    # supervisord runs as the project user: the socket is that user's alone (root reaches it too)
    sock = deployed["server"].file("/run/demo_proj-supervisor/supervisor.sock")
    assert sock.is_socket and (sock.user, sock.group, sock.mode) == ("arches", "arches", 0o700)
    assert deployed["server"].check_output("ps -o user= -C supervisord") == "arches"


def test_redis_runs_under_systemd_on_loopback_only(deployed):
    srv = deployed["server"]
    assert srv.service("redis-server").is_enabled and srv.service("redis-server").is_running
    listeners = srv.check_output("ss -Hltn 'sport = :6379'").split()
    addresses = {w.rsplit(":", 1)[0] for w in listeners if w.endswith(":6379")}
    assert addresses and addresses <= {"127.0.0.1", "[::1]"}, listeners
    # only with the project's own account: no passwordless access
    assert "NOAUTH" in srv.run("redis-cli ping").stdout
    assert srv.check_output(f'REDISCLI_AUTH="$(cat {PASSWORD_FILE})" redis-cli --user demo_proj ping') == "PONG"


def test_settings_local_gets_the_block_and_keeps_the_rest(deployed):
    srv = deployed["server"]
    f = srv.file("/opt/arches/demo_proj/demo_proj/settings_local.py")
    assert f.mode == 0o640 and f.group == "arches"
    text = f.content_string
    assert text.startswith("# Local settings of this server")
    assert 'DEMO_GREETING = "hello from settings_local"' in text
    password = srv.file(PASSWORD_FILE).content_string
    assert len(password) == 32 and password.isalnum()
    assert f"CELERY_BROKER_URL = 'redis://demo_proj:{password}@localhost:6379/0'" in text


def test_the_projects_celery_pin_is_kept(deployed):
    pip = deployed["server"].check_output("runuser -u arches -- /opt/arches/venv/bin/pip list --format=json"
                                          " 2>/dev/null")
    versions = {p["name"].lower(): p["version"] for p in json.loads(pip)}
    assert versions["celery"] == "5.6.3"          # examples/demo_proj/requirements.txt
    assert versions["supervisor"] == "4.3.0"      # our default pin
    assert "redis" in versions and "packaging" in versions


def test_second_deploy_changes_nothing_and_restarts_nothing(deployed):
    srv, name = deployed["server"], deployed["name"]
    before = program_pids(srv)
    run = deployed["project"].fab("-H", name, "deploy")
    assert run.returncode == 0, run.output
    assert run.recap()[name] == {"ok": 7, "changed": 0, "failed": 0}
    assert program_pids(srv) == before
    # the lines the README shows for a deploy with nothing to do
    assert re.search(rf"^{name}  probe        ok \(Debian GNU/Linux 1[23] \((bookworm|trixie)\), systemd, [\d.]+s\)$",
                     run.output, re.M), run.output
    assert f"{name}  system       ok (user arches, directories and log files as they should be)\n" in run.output
    assert f"{name}  broker       ok (redis-server configured, enabled and running)\n" in run.output


def test_changed_concurrency_replaces_one_file_and_restarts_only_the_worker(deployed):
    srv, name, project = deployed["server"], deployed["name"], deployed["project"]
    files = ["/etc/supervisor/demo_proj-supervisord.conf",
             "/etc/supervisor/demo_proj-programs.d/demo_proj-celerybeat.conf",
             "/etc/systemd/system/demo_proj-supervisord.service",
             "/opt/arches/demo_proj/demo_proj/settings_local.py"]
    sums = {path: srv.file(path).sha256sum for path in files}
    before = program_pids(srv)
    project.data["celery"]["concurrency"] = 3
    project.write()
    run = project.fab("-H", name, "deploy")
    assert run.returncode == 0, run.output
    assert run.recap()[name]["changed"] == 2          # configs, supervisord (verify looks)
    assert f"{name}  configs      install demo_proj-celeryd.conf\n" in run.output
    after = program_pids(srv)
    assert after["celery"] != before["celery"]
    assert after["celerybeat"] == before["celerybeat"]
    assert {path: srv.file(path).sha256sum for path in files} == sums
    assert "--concurrency=3" in srv.file("/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf").content_string
    assert send_task(srv, "add", "20", "22") == 42
    # and the run after that is quiet again
    assert project.fab("-H", name, "deploy").recap()[name]["changed"] == 0


def test_logrotate_rotates_every_log_and_the_programs_write_on_in_the_new_files(deployed):
    srv, name, project = deployed["server"], deployed["name"], deployed["project"]
    conf = srv.file("/etc/logrotate.d/fabcelery-demo_proj")
    assert (conf.user, conf.group, conf.mode) == ("root", "root", 0o644)
    # Debian's logrotate.timer runs it daily: a log past its size is rotated within a day
    assert srv.service("logrotate.timer").is_enabled
    assert "\nOnCalendar=daily\n" in srv.check_output("systemctl cat logrotate.timer")
    worker, beat = "/var/log/celery/demo_proj-worker.log", "/var/log/celery/demo_proj-beat.log"
    logs = (worker, beat, "/var/log/supervisor/demo_proj-supervisord.log")
    before = program_pids(srv)
    srv.check_output("logrotate -f /etc/logrotate.d/fabcelery-demo_proj")
    for path in logs:
        new, old = srv.file(path), srv.file(path + ".1")
        assert (new.user, new.group, new.mode) == ("arches", "arches", 0o640), path
        assert old.exists and old.size > 0, path
    old_sizes = {path: srv.file(path + ".1").size for path in logs}
    token = f"rotated-{name}"
    assert send_task(srv, "sleep_then_return", "0", f"'\"{token}\"'") == token
    # the worker's next lines go to the new file at once (supervisord reopened it), beat's too
    assert srv.run(f"for i in $(seq 20); do grep -q {token} {worker} && exit 0; sleep 0.5; done; exit 1").rc == 0
    assert srv.run(f"for i in $(seq 20); do grep -q 'Sending due task' {beat} && exit 0; sleep 0.5; done;"
                   " exit 1").rc == 0
    assert token not in srv.file(worker + ".1").content_string
    assert {path: srv.file(path + ".1").size for path in logs} == old_sizes     # not written to any more
    assert program_pids(srv) == before                                           # nothing restarted
    # the next rotation compresses the one before (delaycompress), and the deploy sees no drift
    srv.check_output("logrotate -f /etc/logrotate.d/fabcelery-demo_proj")
    assert srv.file(worker + ".2.gz").exists and srv.file(worker + ".1").exists
    assert project.fab("-H", name, "deploy").recap()[name] == {"ok": 7, "changed": 0, "failed": 0}
    assert program_pids(srv) == before
