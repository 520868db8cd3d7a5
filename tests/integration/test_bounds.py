"""Nothing waits forever, nothing is left half-done (Debian 13 broker host, Debian 12 worker).

apt's lock held by another process (as unattended-upgrades holds it at a VM's first boot),
a frozen broker and a paused host under `fab status`, Ctrl-C in the middle of a fleet
deploy, and a changed requirements file, which must restart the programs that run from
the virtualenv. The tests share two hosts and run in this order: the first two need the
broker host fresh (a bare host: they test its first deploy); the worker host, which only
joins the fleet for the day-two tests, boots meanwhile from the snapshot of a deployed worker
(tests/integration/snapshots.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import ROOT, Project, install_example_project, server
from .snapshots import start_deployed

MQ, APP = "bnd-mq", "bnd-app"
CONF = "/etc/supervisor/demo_proj-supervisord.conf"
CTL = f"/opt/arches/venv/bin/supervisorctl -c {CONF}"
CELERYD = "/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf"
REQUIREMENTS = "/opt/arches/demo_proj/requirements.txt"
WORKER_LOG = "/var/log/celery/demo_proj-worker.log"
SITE = "/opt/arches/venv/lib/python3*/site-packages"

# Holds apt's locks as apt does (fcntl F_SETLK write locks on dpkg's frontend lock and lock),
# named as unattended-upgrades is (its comm: "unattended-upgr"). A fresh host has perl
# (Essential), not python3; flock(1) would take flock(2) locks, which apt does not see.
HOLD_LOCK = r"""
use Fcntl;
$0 = "unattended-upgrade";
my @held;
for my $f ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock") {
    open(my $fh, "+>>", $f) or die "open $f: $!";
    my $lock = pack("s s x4 q q i x4", F_WRLCK, 0, 0, 0, 0);
    fcntl($fh, F_SETLK, $lock) or die "lock $f: $!";
    push @held, $fh;
}
open(my $ready, ">", "/tmp/lock-held") or die; close($ready);
sleep($ARGV[0]);
unlink("/tmp/lock-held");
"""


@pytest.fixture(scope="module")
def hosts(fleet, tmp_path_factory):
    """The broker host (fresh) at once; the worker host (from a snapshot) boots in a thread meanwhile."""
    mq = fleet.start(MQ, suite="trixie")
    install_example_project(fleet, mq)
    app: dict = {}

    def boot_app():
        try:
            app["host"] = start_deployed(fleet, APP, suite="bookworm", kind="worker")
            install_example_project(fleet, app["host"])
        except Exception as exc:  # noqa: BLE001 - raised in the test that needs the host
            app["error"] = exc

    booting = threading.Thread(target=boot_app)
    booting.start()
    project = Project(fleet, tmp_path_factory.mktemp("bounds"), {
        MQ: {"roles": ["broker", "worker", "beat"], "internal_address": mq.internal_ip},
        APP: {"roles": ["worker"]},
    })
    state = {"fleet": fleet, "mq": mq, "project": project, "booting": booting, "app": app}
    yield state
    booting.join()
    for host in (mq, app.get("host")):
        if host is not None:
            fleet.remove(host)


def sh(state, host, command: str, check: bool = True) -> str:
    return state["fleet"].exec(host, command, check=check).stdout.strip()


def hold_apt_lock(state, seconds: int) -> int:
    """Start a process on the broker host that holds apt's lock for `seconds`; its pid."""
    fleet, mq = state["fleet"], state["mq"]
    fleet.exec(mq, "cat > /tmp/hold-lock.pl", input=HOLD_LOCK)
    pid = int(sh(state, mq, f"rm -f /tmp/lock-held; setsid perl /tmp/hold-lock.pl {seconds} "
                            ">/tmp/hold-lock.log 2>&1 < /dev/null & echo $!"))
    deadline = time.monotonic() + 10
    while sh(state, mq, "test -e /tmp/lock-held && echo yes", check=False) != "yes":
        assert time.monotonic() < deadline, sh(state, mq, "cat /tmp/hold-lock.log", check=False)
        time.sleep(0.1)
    assert sh(state, mq, f"cat /proc/{pid}/comm") == "unattended-upgr"
    return pid


def installed(state, host, package: str) -> bool:
    return sh(state, host, f"dpkg-query -W -f='${{db:Status-Abbrev}}' {package} 2>/dev/null", check=False) \
        .startswith("ii")


def test_with_apt_lock_held_past_the_bound_the_host_fails_with_that_sentence_and_nothing_is_installed(hosts):
    # held (and killed below) for longer than the deploy can take to reach apt-get install: the
    # lock is dpkg's, which `apt-get update` before it does not take, and which under load can
    # take longer than a short hold (CI saw the install go through once the lock was let go)
    pid = hold_apt_lock(hosts, 300)
    try:
        run = hosts["project"].fab("-H", MQ, "deploy", "--apt-lock-timeout", "5", timeout=120)
    finally:
        sh(hosts, hosts["mq"], f"kill {pid}", check=False)
    assert run.returncode == 1, run.output
    held_by = f"held by unattended-upgr (pid {pid})"
    assert re.search(rf"{MQ}\s+system\s+waiting for apt's lock, {re.escape(held_by)}, \d+ s$", run.output, re.M)
    failure = re.search(rf"^{MQ}\s+system\s+failed: (.*)$", run.output, re.M)
    assert failure, run.output
    assert re.fullmatch(rf"install .*: waiting for apt's lock, {re.escape(held_by)}, gave up after [5-9] s "
                        r"\(bounds\.apt_lock, --apt-lock-timeout\); nothing was installed", failure[1])
    assert run.recap()[MQ]["failed"] == 1
    assert "Traceback" not in run.output
    # nothing else changed: no package, no user, no directory of ours
    for package in ("python3-venv", "redis-server"):
        assert not installed(hosts, hosts["mq"], package)
    srv = server(hosts["fleet"], hosts["mq"])
    assert not srv.user("arches").exists
    assert not srv.file("/etc/supervisor").exists and not srv.file("/var/lib/fabcelery").exists


def test_a_first_deploy_waits_for_apt_lock_and_succeeds(hosts):
    pid = hold_apt_lock(hosts, 25)
    started = time.monotonic()
    run = hosts["project"].fab("-H", MQ, "deploy", timeout=600)
    assert run.returncode == 0, run.output
    assert re.search(rf"{MQ}\s+system\s+waiting for apt's lock, held by unattended-upgr \(pid {pid}\), 0 s$",
                     run.output, re.M)
    assert time.monotonic() - started > 15         # it did wait for the holder ...
    assert sh(hosts, hosts["mq"], f"test -d /proc/{pid} && echo alive", check=False) == ""   # ... to finish
    assert installed(hosts, hosts["mq"], "redis-server")
    assert run.recap()[MQ]["failed"] == 0
    hosts["mq deployed"] = True


def process_start(state, host, pid: int) -> int:
    """When the process started, in seconds since the epoch (by the host's clock)."""
    now, elapsed = sh(state, host, f"date +%s; ps -o etimes= -p {pid}").split()
    return int(now) - int(elapsed)


def pid_of(state, host, program: str) -> int:
    return int(sh(state, host, f"{CTL} pid {program}"))


def warm_shutdowns(state, host) -> int:
    return int(sh(state, host, f"grep -c 'Warm shutdown' {WORKER_LOG} || true"))


@pytest.fixture
def mq_deployed(hosts):
    """The broker host deployed: by the first-deploy test, or (when a test runs alone) now."""
    if not hosts.get("mq deployed"):
        run = hosts["project"].fab("-H", MQ, "deploy")
        assert run.returncode == 0, run.output
        hosts["mq deployed"] = True
    return hosts


def test_a_changed_requirements_file_installs_the_package_and_restarts_the_programs_once(mq_deployed):
    state, mq = mq_deployed, mq_deployed["mq"]
    before = {p: pid_of(state, mq, p) for p in ("celery", "celerybeat")}
    shutdowns = warm_shutdowns(state, mq)
    sh(state, mq, f"echo 'iniconfig==2.0.0' >> {REQUIREMENTS}")
    run = state["project"].fab("-H", MQ, "deploy")
    assert run.returncode == 0, run.output
    dist = sh(state, mq, f"ls -d {SITE}/iniconfig-2.0.0.dist-info")
    installed_at = int(sh(state, mq, f"stat -c %Y {dist}"))
    after = {p: pid_of(state, mq, p) for p in ("celery", "celerybeat")}
    for program in ("celery", "celerybeat"):
        assert after[program] != before[program], program
        assert process_start(state, mq, after[program]) >= installed_at, program
    assert re.search(rf"^{MQ}\s+supervisord\s+restart celery, celerybeat \(pip changed the virtualenv; warm "
                     r"shutdown\)$", run.output, re.M)
    assert re.search(rf"^{MQ}\s+ok=\d+ changed=\d+ failed=0\s+\(restarted celery, celerybeat: pip changed the "
                     r"virtualenv\)$", run.output, re.M)
    assert warm_shutdowns(state, mq) == shutdowns + 1          # the worker was stopped once, warm

    # requirements and the worker's config at once: the worker restarts once (with its new
    # config), beat once (for the virtualenv)
    shutdowns = warm_shutdowns(state, mq)
    sh(state, mq, f"sed -i 's/^iniconfig==2.0.0$/iniconfig==2.1.0/' {REQUIREMENTS}")
    state["project"].data["celery"]["concurrency"] = 3
    state["project"].write()
    both = state["project"].fab("-H", MQ, "deploy")
    assert both.returncode == 0, both.output
    lines = [line for line in both.output.splitlines() if re.match(rf"{MQ}\s+supervisord\s+(restart|reread)", line)]
    assert [re.sub(r"\s+", " ", line) for line in lines] == [
        f"{MQ} supervisord reread and update (celery)",
        f"{MQ} supervisord restart celerybeat (pip changed the virtualenv; warm shutdown)",
    ]
    assert warm_shutdowns(state, mq) == shutdowns + 1
    assert sh(state, mq, f"ls -d {SITE}/iniconfig-*.dist-info").endswith("iniconfig-2.1.0.dist-info")

    again = state["project"].fab("-H", MQ, "deploy")
    assert again.recap()[MQ]["changed"] == 0, again.output


@pytest.fixture(scope="module")
def both(hosts):
    """The worker host joins: the whole fleet deployed."""
    hosts["booting"].join()
    if "error" in hosts["app"]:
        raise hosts["app"]["error"]
    run = hosts["project"].fab("deploy")
    assert run.returncode == 0, run.output
    return {**hosts, "app": hosts["app"]["host"]}


def timed_status(state) -> tuple[float, object]:
    started = time.monotonic()
    run = state["project"].fab("status", timeout=120)
    return time.monotonic() - started, run


def rows(output: str, host: str) -> dict[str, str]:
    """PROGRAM -> the rest of its row, of one host's rows of the status table."""
    table = {}
    for line in output.splitlines():
        cells = line.split(None, 2)
        if len(cells) == 3 and cells[0] == host:
            table[cells[1]] = cells[2]
    return table


def test_status_with_a_frozen_redis_names_the_broker_within_seconds_and_reports_the_other_hosts(both):
    mq = both["mq"]
    assert "RUNNING" in rows(timed_status(both)[1].output, APP)["celery"]
    sh(both, mq, "kill -STOP $(pidof redis-server)")
    try:
        took, run = timed_status(both)
    finally:
        sh(both, mq, "kill -CONT $(pidof redis-server)")
    assert run.returncode == 1, run.output
    assert took < 45
    broker = rows(run.output, MQ)["redis-server"]
    assert broker.startswith("DOWN") and "redis-cli ping: no answer" in broker
    assert rows(run.output, MQ)["celery"].startswith("RUNNING")
    assert rows(run.output, APP)["celery"].startswith("RUNNING")
    assert "Traceback" not in run.output


def test_status_with_a_paused_host_reports_it_within_the_connect_bound_and_the_others_intact(both):
    both["fleet"].pause(both["app"])
    try:
        took, run = timed_status(both)
    finally:
        both["fleet"].unpause(both["app"])
    assert run.returncode == 1, run.output
    assert took < 45
    unreachable = rows(run.output, APP)["-"]
    assert unreachable.startswith("UNREACHABLE") and "within 10 s (bounds.connect)" in unreachable
    assert rows(run.output, MQ)["celery"].startswith("RUNNING")
    assert rows(run.output, MQ)["redis-server"].startswith("UP")
    assert "Traceback" not in run.output


def test_a_host_that_freezes_during_a_task_is_given_up_by_the_keepalive_and_the_others_go_on(both):
    project = both["project"]
    project.data["bounds"] = {"keepalive": 2}        # given up after 3 x 2 s of silence
    project.write()
    command = [str(Path(sys.executable).parent / "fab"), "-r", str(ROOT), "-S", str(both["fleet"].ssh_config_path),
               "restart-celery"]
    env = {**os.environ, "FABCELERY_INVENTORY": str(project.inventory_path)}
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:       # the restart has started on both hosts: freeze one
            print(line, end="")
            if line.startswith(APP) and "restart celery" in line:
                break
        time.sleep(0.5)
        both["fleet"].pause(both["app"])
        paused = time.monotonic()
        # when the frozen host is given up (its line), not when the other host's restart ends:
        # that one waits for a warm shutdown and a ping, longer on a busy machine
        took, lines = None, []
        for line in proc.stdout:
            lines.append(line)
            if took is None and re.match(rf"{APP}\s+restart\s+failed", line):
                took = time.monotonic() - paused
        proc.wait(timeout=120)
        rest = "".join(lines)
        print(rest)
    finally:
        both["fleet"].unpause(both["app"], check=False)   # not paused if the pause failed
        del project.data["bounds"]
        project.write()
    assert proc.returncode == 1
    assert took is not None and took < 20, took
    assert re.search(rf"^{APP}\s+restart\s+failed: restart: the host stopped answering: nothing came back for "
                     r"\d+ s \(SSH keepalive every 2 s, bounds\.keepalive; [\d.]+s\)$", rest, re.M), rest
    assert re.search(rf"^{MQ}\s+restart\s+restarted celery pid \d+ -> \d+, celerybeat", rest, re.M), rest
    assert "Traceback" not in rest


def running_concurrency(state, host) -> str:
    pid = pid_of(state, host, "celery")
    return sh(state, host, f"ps -o args= -p {pid} | grep -o -- '--concurrency=[0-9]*'")


def test_ctrl_c_in_a_fleet_deploy_exits_130_and_the_next_deploy_completes_the_work(both):
    project = both["project"]
    project.data["celery"]["concurrency"] = 4          # a new celeryd.conf on both hosts
    project.write()
    command = [str(Path(sys.executable).parent / "fab"), "-r", str(ROOT), "-S", str(both["fleet"].ssh_config_path),
               "deploy"]
    env = {**os.environ, "FABCELERY_INVENTORY": str(project.inventory_path)}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    print(output)
    assert proc.returncode == 130, output
    assert took < 20
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert "Ctrl-C: no new action will start" in output
    recap = output[output.index("RECAP"):]
    for host in (MQ, APP):     # each host says what was done and what was not
        assert re.search(rf"^{host}\s+ok=\d+ changed=\d+ failed=0\s+\(interrupted \(Ctrl-C\)", recap, re.M), host
    assert re.search(r"not started: [a-z, ]*verify", recap)

    heal = project.fab("deploy")
    assert heal.returncode == 0, heal.output
    for host in (both["mq"], both["app"]):
        assert running_concurrency(both, host) == "--concurrency=4"
    quiet = project.fab("deploy")
    assert quiet.returncode == 0 and {h: r["changed"] for h, r in quiet.recap().items()} == {MQ: 0, APP: 0}, \
        quiet.output
