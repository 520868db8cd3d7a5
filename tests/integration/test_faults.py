"""Faults on a real server (Debian 13): a killed worker, a restarted broker, a reboot, and
a deploy cut off during its config step. The cluster heals by itself, or with the next
deploy, and nothing is left half-done.

The tests share one deployed host and run in this order.
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

from .conftest import ROOT, Project, install_example_project, run_checked, server, wait_for

SUITE, NAME = "trixie", "fault13"
CONF = "/etc/supervisor/demo_proj-supervisord.conf"
CTL = f"runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c {CONF}"
CELERYD = "/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf"
PENDING = "/var/lib/fabcelery/demo_proj/pending-apply"
VENV_PYTHON = "/opt/arches/venv/bin/python"
# Redis answers the project's own account only (its password from the file, not the command line)
REDIS_PING = 'REDISCLI_AUTH="$(cat /var/lib/fabcelery/demo_proj/broker-password)" redis-cli --user demo_proj ping'


@pytest.fixture(scope="module")
def deployed(fleet, tmp_path_factory):
    host = fleet.start(NAME, suite=SUITE)
    install_example_project(fleet, host)
    workdir = tmp_path_factory.mktemp(NAME)
    project = Project(fleet, workdir, {NAME: {"roles": ["broker", "worker", "beat"]}})
    run = project.fab("-H", NAME, "deploy")
    assert run.returncode == 0, run.output
    yield {"fleet": fleet, "host": host, "server": server(fleet, host), "project": project, "workdir": workdir}
    fleet.remove(host)


def sh(state, command: str, check: bool = True) -> str:
    return state["fleet"].exec(state["host"], command, check=check).stdout.strip()


def worker_pid(state) -> int:
    """The worker's pid as supervisord knows it (0: no process), in any state, STARTING too."""
    return int(sh(state, f"{CTL} pid celery", check=False) or 0)


def all_running(state) -> bool:
    out = sh(state, f"LC_ALL=C {CTL} status", check=False)
    states = {line.split()[0]: line.split()[1] for line in out.splitlines() if len(line.split()) >= 2}
    return states.get("celery") == "RUNNING" and states.get("celerybeat") == "RUNNING"


def send_task(state, *args: str) -> object:
    out = sh(state, "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python "
                    "-m demo_proj.sendtask " + " ".join(args))
    return json.loads(out.splitlines()[-1])


def running_concurrency(state) -> str:
    """--concurrency of the worker process that runs now (not of the file on disk)."""
    return sh(state, f"ps -o args= -p {worker_pid(state)} | grep -o -- '--concurrency=[0-9]*'")


def test_a_killed_worker_is_restarted_by_supervisor_within_seconds(deployed):
    old = worker_pid(deployed)
    assert old > 0
    # timed by the host's own clock (seconds since boot): each look at the pid is a supervisorctl
    # run through podman exec, which takes seconds of its own on a loaded machine
    killed_at = float(sh(deployed, f"kill -9 {old} && cut -d' ' -f1 /proc/uptime"))
    new = wait_for(lambda: (pid := worker_pid(deployed)) not in (0, old) and pid, timeout=10)
    assert new, "supervisord did not start a new worker within 10 s"
    # the new process's start (/proc/PID/stat's 22nd field, after `PID (COMM)`), in clock ticks since boot
    ticks, per_second = sh(deployed, f"sed 's/.*) //' /proc/{new}/stat | cut -d' ' -f20; getconf CLK_TCK").split()
    assert 0 <= int(ticks) / int(per_second) - killed_at < 5
    assert wait_for(lambda: all_running(deployed), timeout=60)
    assert send_task(deployed, "add", "1", "2") == 3


def test_the_worker_reconnects_after_a_broker_restart_and_runs_tasks(deployed):
    pid = worker_pid(deployed)
    sh(deployed, "systemctl restart redis-server")
    assert sh(deployed, REDIS_PING) == "PONG"
    assert send_task(deployed, "add", "20", "22") == 42
    assert worker_pid(deployed) == pid          # the same worker reconnected; nobody restarted it


def test_after_a_reboot_supervisord_the_worker_and_the_broker_come_back_by_themselves(deployed):
    before = worker_pid(deployed)
    deployed["fleet"].restart(deployed["host"])
    assert wait_for(lambda: all_running(deployed), timeout=90), sh(deployed, f"{CTL} status", check=False)
    srv = deployed["server"]
    for unit in ("demo_proj-supervisord", "redis-server"):
        assert srv.service(unit).is_enabled and srv.service(unit).is_running, unit
    assert sh(deployed, REDIS_PING) == "PONG"
    assert worker_pid(deployed) != before
    assert send_task(deployed, "add", "2", "3") == 5


def bytes_sent(port: int) -> int:
    """Bytes sent so far over this machine's connections to the test host's SSH port (ss -i)."""
    out = run_checked(["ss", "-Htni", "state", "established", f"( dport = :{port} )"], text=True).stdout
    return sum(int(n) for n in re.findall(r"bytes_sent:(\d+)", out))


def start_deploy(state, env: dict | None = None) -> subprocess.Popen:
    """`fab deploy` in the background; returns once it has printed that the configs step installs files."""
    command = [str(Path(sys.executable).parent / "fab"), "-r", str(ROOT), "-S", str(state["fleet"].ssh_config_path),
               "-H", NAME, "deploy"]
    environment = {**os.environ, "FABCELERY_INVENTORY": str(state["project"].inventory_path), **(env or {})}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    for line in proc.stdout:
        print(line, end="")
        if f"{NAME}  configs      install " in line:
            return proc
    proc.wait()
    raise AssertionError(f"the deploy ended (status {proc.returncode}) before its configs step installed anything")


def test_a_deploy_cut_off_during_its_config_step_is_completed_by_the_next(deployed):
    project, srv = deployed["project"], deployed["server"]
    old_conf, old_pid = srv.file(CELERYD).sha256sum, worker_pid(deployed)
    project.data["celery"]["concurrency"] = 3
    project.write()

    # 1. cut off mid-upload: a template that renders a big file makes the upload take seconds
    padding, copies = "; padding that makes the upload of this file take a few seconds\n", 2_000_000
    slow = deployed["workdir"] / "slow_templates"
    slow.mkdir()
    template = (ROOT / "templates" / "celeryd.conf.j2").read_text()
    (slow / "celeryd.conf.j2").write_text(template + f"{{{{ {padding!r} * {copies} }}}}")
    proc = start_deploy(deployed, env={"FABCELERY_TEMPLATES": str(slow)})
    port = deployed["host"].port
    sent = bytes_sent(port)
    # killed once fab has sent some 16 MB of the file's 128 MB (measured here: quick even on a loaded machine)
    assert wait_for(lambda: bytes_sent(port) - sent > 16_000_000, timeout=120, interval=0.01)
    proc.kill()
    proc.wait()
    partial = wait_for(lambda: sh(deployed, "find /tmp -path '/tmp/fabcelery-upload.*/*' -size +0", check=False),
                       timeout=10)
    assert partial, "no upload was seen on the server"
    time.sleep(1)
    size, mode, owner = sh(deployed, f"stat -c '%s %a %U' {partial}").split()
    assert int(size) < len(padding) * copies        # a truncated upload ...
    assert (mode, owner) == ("600", "deploy")
    assert sh(deployed, f"stat -c '%a %U' {Path(partial).parent}") == "700 deploy"   # ... in a private directory
    assert srv.file(CELERYD).sha256sum == old_conf  # the config itself was never touched
    assert sh(deployed, "ls -A /etc/supervisor/demo_proj-programs.d") == ("demo_proj-celerybeat.conf\n"
                                                                          "demo_proj-celeryd.conf")
    assert not srv.file(PENDING).exists and worker_pid(deployed) == old_pid

    # 2. cut off after the upload, while the new file is validated (slow here: the virtualenv's
    # `python`, which only the validation calls, sleeps first). The server finishes the install
    # on its own, so the file is new but the worker still runs the old one
    sh(deployed, f"rm {VENV_PYTHON} && printf '#!/bin/sh\\nsleep 10.5\\nexec {VENV_PYTHON}3 \"$@\"\\n' > {VENV_PYTHON}"
                 f" && chmod 755 {VENV_PYTHON}")
    try:
        proc = start_deploy(deployed)
        assert wait_for(lambda: sh(deployed, "pgrep -f 'sleep 10.5'", check=False), timeout=30, interval=0.05)
        proc.kill()
        proc.wait()
        assert wait_for(lambda: not sh(deployed, "pgrep -f 'sleep 10.5'", check=False), timeout=30)
    finally:
        sh(deployed, f"ln -sf python3 {VENV_PYTHON}")
    # the validation (a Python start and supervisor's import, seconds on a loaded machine) ends after the sleep
    assert wait_for(lambda: "--concurrency=3 " in srv.file(CELERYD).content_string, timeout=30)
    assert srv.file(PENDING).content_string == CELERYD + "\n"
    assert worker_pid(deployed) == old_pid and running_concurrency(deployed) == "--concurrency=2"

    # 3. the next deploy applies what the cut-off one installed, and sweeps its old upload
    sh(deployed, "touch -d '-1 hour' /tmp/fabcelery-upload.*")     # as if that was an hour ago
    run = project.fab("-H", NAME, "deploy")
    assert run.returncode == 0, run.output
    assert run.recap()[NAME]["changed"] > 0 and run.recap()[NAME]["failed"] == 0
    assert f"{NAME}  system       remove 1 upload directory left by a deploy that was cut off" in run.output
    assert f"{NAME}  supervisord  reread and update (celery)" in run.output
    assert worker_pid(deployed) != old_pid and running_concurrency(deployed) == "--concurrency=3"
    assert not srv.file(PENDING).exists
    assert sh(deployed, "ls -d /tmp/fabcelery-upload.* 2>/dev/null || true") == ""
    assert send_task(deployed, "add", "3", "4") == 7
    again = project.fab("-H", NAME, "deploy")
    assert again.recap()[NAME] == {"ok": 7, "changed": 0, "failed": 0}, again.output
