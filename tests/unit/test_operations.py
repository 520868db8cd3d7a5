"""Day-two operations without SSH: supervisorctl's output read into status rows, the
exit decision, rolling batches, and each task's remote script run here in sh against
fake supervisorctl, celery and runuser commands."""

from __future__ import annotations

import configparser
import io
import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tasks import operations
from tasks.configs import node_name
from tasks.deploy import plan_deploy
from tasks.layout import Layout
from tasks.operations import (
    check_lines,
    logs_operation,
    ping_operation,
    restart_operation,
    shutdown_operation,
    start_operation,
    stop_operation,
)
from tasks.probe import Facts
from tasks.rolling import rolling_batches, rolling_size
from tasks.status import (
    HostStatus,
    ProgramRow,
    fleet_ok,
    host_status,
    status_document,
    status_facts,
    status_operation,
    status_table,
    unreachable,
)
from tasks.supervisor import parse_status
from tasks.target import Target

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of

# --- supervisorctl status, as supervisor 4.3 prints it under LC_ALL=C ------------------

STATUS_OUTPUT = """\
celery                           RUNNING   pid 4242, uptime 1 day, 2:03:04
celerybeat                       FATAL     Exited too quickly (process log may have details)
flower:flower_00                 BACKOFF   Exited too quickly (process log may have details)
flower:flower_01                 EXITED    Nov 26 07:42 PM
other                            STOPPED   Not started
starting                         STARTING
"""


def test_status_lines_are_read_with_state_pid_and_uptime():
    programs = {p.name: p for p in parse_status(STATUS_OUTPUT)}
    assert list(programs) == ["celery", "celerybeat", "flower:flower_00", "flower:flower_01", "other", "starting"]
    assert (programs["celery"].state, programs["celery"].pid, programs["celery"].uptime) == \
        ("RUNNING", 4242, "1 day, 2:03:04")
    assert programs["celerybeat"].state == "FATAL"
    assert programs["celerybeat"].pid is None
    assert programs["celerybeat"].description == "Exited too quickly (process log may have details)"
    assert programs["flower:flower_00"].state == "BACKOFF"
    assert programs["flower:flower_01"].state == "EXITED"
    assert programs["flower:flower_01"].description == "Nov 26 07:42 PM"
    assert programs["other"].state == "STOPPED"
    assert programs["starting"].state == "STARTING"


def test_lines_that_are_not_programs_are_skipped():
    text = ("unix:///run/my_proj-supervisor.sock no such file\n"
            "celery: ERROR (no such process)\n"
            "error: <class 'ConnectionRefusedError'>, [Errno 111] Connection refused\n")
    assert parse_status(text) == []
    assert parse_status(None) == []


# --- status rows and the exit decision ---------------------------------------------------


def status_of(status_text: str | None, redis: str | None = "PONG", host: str = "prod", inventory=None):
    inventory = inventory or make_inventory()
    facts = Facts(supervisor_status=status_text, redis_ping=redis)
    return host_status(target_of(inventory, host), facts)


RUNNING = ("celery                           RUNNING   pid 101, uptime 0:10:00\n"
           "celerybeat                       RUNNING   pid 102, uptime 0:10:00\n")


def test_a_healthy_host_has_every_program_running_and_its_broker_up():
    status = status_of(RUNNING)
    assert [(r.name, r.state, r.pid, r.uptime) for r in status.rows] == [
        ("celery", "RUNNING", 101, "0:10:00"),
        ("celerybeat", "RUNNING", 102, "0:10:00"),
        ("redis-server", "UP", None, ""),
    ]
    assert status.ok and fleet_ok([status])
    assert status.counts() == (3, 0)


def test_a_stopped_worker_fails_the_host_and_says_so():
    status = status_of(RUNNING.replace("RUNNING   pid 101, uptime 0:10:00", "STOPPED   Nov 26 07:42 PM"))
    worker = status.programs[0]
    assert (worker.name, worker.state, worker.detail) == ("celery", "STOPPED", "stopped at 19:42 (Nov 26)")
    assert not status.ok and not fleet_ok([status_of(RUNNING), status])
    assert status.counts() == (2, 1)


@pytest.mark.parametrize("state", ["FATAL", "BACKOFF", "EXITED", "STARTING", "STOPPING", "UNKNOWN"])
def test_only_running_counts_as_running(state):
    status = status_of(RUNNING.replace("celerybeat                       RUNNING",
                                       f"celerybeat                       {state}"))
    assert not status.ok
    assert [r.state for r in status.programs] == ["RUNNING", state]


def test_group_members_stand_for_their_program_and_extra_programs_are_shown():
    text = ("celery:celery_00                 RUNNING   pid 11, uptime 0:01:00\n"
            "celery:celery_01                 FATAL     Exited too quickly (process log may have details)\n"
            "celerybeat                       RUNNING   pid 12, uptime 0:01:00\n"
            "flower                           RUNNING   pid 13, uptime 0:01:00\n")
    status = status_of(text)
    assert [(r.name, r.state) for r in status.programs] == [
        ("celery:celery_00", "RUNNING"), ("celery:celery_01", "FATAL"), ("celerybeat", "RUNNING"),
        ("flower", "RUNNING")]
    assert not status.ok


def test_a_program_supervisord_does_not_know_is_missing():
    status = status_of("celery                           RUNNING   pid 101, uptime 0:10:00\n")
    assert (status.programs[1].name, status.programs[1].state) == ("celerybeat", "MISSING")
    assert not status.ok


def test_supervisord_down_marks_every_program_down_with_the_reason():
    status = status_of("unix:///run/my_proj-supervisor.sock no such file\n")
    assert [(r.name, r.state) for r in status.programs] == [("celery", "DOWN"), ("celerybeat", "DOWN")]
    assert status.programs[0].detail.startswith("supervisord is not running (unix:///run/my_proj-supervisor.sock")


def test_a_host_never_deployed_says_so():
    status = status_of(None, redis=None)
    assert {r.state for r in status.programs} == {"MISSING"}
    assert "not deployed" in status.programs[0].detail
    assert status.broker.state == "DOWN"


def test_a_broker_that_does_not_answer_fails_the_host():
    status = status_of(RUNNING, redis="NOAUTH Authentication required.")
    assert (status.broker.state, status.broker.detail) == ("DOWN", "redis-cli ping: NOAUTH Authentication required.")
    assert not status.ok


def test_worker_hosts_without_the_broker_role_have_no_broker_row():
    inventory = make_inventory(hosts={"a": {"roles": ["broker", "beat"], "internal_address": "10.0.0.5"},
                                      "b": {"roles": ["worker"]}})
    status = status_of("celery                           RUNNING   pid 7, uptime 0:00:30\n", redis=None,
                       host="b", inventory=inventory)
    assert status.broker is None and status.ok
    assert not status_operation(target_of(inventory, "b")).script.count("redis-cli")
    assert "redis-cli" in status_operation(target_of(inventory, "a")).script


def test_an_unreachable_host_fails_the_fleet_and_keeps_its_reason():
    down = unreachable("c", "cannot connect to 127.0.0.1:2222: Connection refused")
    assert not down.ok and down.counts() == (0, 1)
    assert not fleet_ok([status_of(RUNNING), down])
    assert not fleet_ok([])


def test_the_table_names_every_host_and_what_is_wrong():
    stopped = status_of(RUNNING.replace("celery                           RUNNING   pid 101, uptime 0:10:00",
                                        "celery                           STOPPED   Not started"))
    table = status_table([status_of(RUNNING), stopped, unreachable("gone", "no answer from 10.0.0.9:22 within 10 s")])
    lines = table.splitlines()
    assert lines[0].split() == ["HOST", "PROGRAM", "STATE", "PID", "UPTIME", "DETAIL"]
    assert lines[1].split() == ["prod", "celery", "RUNNING", "101", "0:10:00", "queues:", "celery"]
    assert lines[4].split()[:3] == ["prod", "celery", "STOPPED"] and lines[4].endswith("Not started")
    assert lines[-1].split()[:3] == ["gone", "-", "UNREACHABLE"]
    assert lines[-1].endswith("no answer from 10.0.0.9:22 within 10 s")
    assert "\033[" not in table
    assert "\033[31mSTOPPED" in status_table([stopped], color=True)


def test_json_has_the_same_rows_and_the_verdict():
    healthy, down = status_of(RUNNING), unreachable("gone", "Connection refused")
    document = json.loads(json.dumps(status_document([healthy, down])))
    assert document["ok"] is False
    assert [h["host"] for h in document["hosts"]] == ["prod", "gone"]
    prod = document["hosts"][0]
    assert prod["ok"] and prod["reachable"] and prod["error"] is None
    assert [(p["name"], p["state"], p["pid"]) for p in prod["programs"]] == [("celery", "RUNNING", 101),
                                                                           ("celerybeat", "RUNNING", 102)]
    assert prod["broker"]["state"] == "UP"
    assert document["hosts"][1] == {"host": "gone", "ok": False, "reachable": False, "error": "Connection refused",
                                    "programs": [], "broker": None}
    assert status_document([healthy])["ok"] is True


SUPERVISORD_CONF = """\
[unix_http_server]
file=%(here)s/s.sock
[supervisord]
logfile=%(here)s/supervisord.log
pidfile=%(here)s/supervisord.pid
childlogdir=%(here)s
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://%(here)s/s.sock
[program:celery]
command=sleep 600
startsecs=0
stopsignal=KILL
[program:celerybeat]
command=false
startsecs=1
startretries=0
autorestart=false
[program:idle]
command=sleep 600
autostart=false
stopsignal=KILL
[program:odd]
; its error message holds what XML escapes
command=/nonexistent/a&b<c>"d"
startretries=0
[program:flower]
command=sleep 600
process_name=%(program_name)s_%(process_num)02d
numprocs=2
startsecs=0
stopsignal=KILL
"""


@pytest.fixture(scope="module")
def real_supervisord(tmp_path_factory):
    """A real supervisord (from the test dependencies) with a running, a FATAL, a stopped and a group program."""
    tmp_path = tmp_path_factory.mktemp("supervisord")
    conf = tmp_path / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    process = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "status"]
    deadline = time.monotonic() + 20
    while (out := subprocess.run(ctl, capture_output=True, text=True).stdout).count("FATAL") < 2:
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    yield {"conf": conf, "socket": tmp_path / "s.sock", "venv": venv, "ctl": ctl}
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture
def supervisord(real_supervisord, monkeypatch):
    """The host's layout pointed at the real supervisord's config and socket."""
    monkeypatch.setattr(Layout, "supervisord_conf", property(lambda _: str(real_supervisord["conf"])))
    monkeypatch.setattr(Layout, "socket", property(lambda _: str(real_supervisord["socket"])))
    return {**real_supervisord, "inventory": make_inventory(project__virtualenv=str(real_supervisord["venv"]))}


def run_status(inventory, host="prod"):
    operation = status_operation(target_of(inventory, host))
    done = subprocess.run(["sh", "-c", operation.script], capture_output=True, text=True, timeout=30, check=True)
    return operation, done.stdout


def test_status_reads_what_supervisorctl_status_reads(supervisord):
    """Our XML-RPC call prints what supervisorctl prints: same programs, states, pids, descriptions."""
    _, output = run_status(supervisord["inventory"])
    ours = parse_status(status_facts(output).supervisor_status)
    theirs = parse_status(subprocess.run(supervisord["ctl"], capture_output=True, text=True).stdout)
    assert [(p.name, p.state, p.pid) for p in ours] == [(p.name, p.state, p.pid) for p in theirs]
    assert [p.description for p in ours if p.state != "RUNNING"] == \
        [p.description for p in theirs if p.state != "RUNNING"]
    assert [(p.name, p.state) for p in ours] == [("celery", "RUNNING"), ("celerybeat", "FATAL"),
                                                  ("flower:flower_00", "RUNNING"), ("flower:flower_01", "RUNNING"),
                                                  ("idle", "STOPPED"), ("odd", "FATAL")]
    assert [p.description for p in ours if p.name == "odd"] == ["can't find command '/nonexistent/a&b<c>d'"]


def test_status_of_a_host_with_a_fatal_program_fails_and_names_it(supervisord):
    operation, output = run_status(supervisord["inventory"])
    outcome = operation.interpret(output)
    assert outcome.failed == "celerybeat FATAL, idle STOPPED, odd FATAL, redis-server DOWN"   # no Redis here
    status = outcome.status
    assert [r.name for r in status.programs] == ["celery", "celerybeat", "flower:flower_00", "flower:flower_01",
                                                 "idle", "odd"]
    assert status.broker.state == "DOWN"


def test_status_when_supervisord_is_down(supervisord, monkeypatch, tmp_path):
    monkeypatch.setattr(Layout, "socket", property(lambda _: str(tmp_path / "gone.sock")))   # no supervisord there
    operation, output = run_status(supervisord["inventory"])
    status = operation.interpret(output).status
    assert [(r.name, r.state) for r in status.programs] == [("celery", "DOWN"), ("celerybeat", "DOWN")]
    assert status.programs[0].detail.startswith("supervisord is not running (unix://")


def test_status_of_a_host_never_deployed(tmp_path):
    inventory = make_inventory(project__virtualenv=str(tmp_path / "none"))
    operation, output = run_status(inventory)
    status = operation.interpret(output).status
    assert {r.state for r in status.programs} == {"MISSING"}
    assert "not deployed" in status.programs[0].detail


# --- rolling restarts ------------------------------------------------------------------


def test_rolling_takes_one_host_at_a_time_or_n():
    assert rolling_size(None) is None and rolling_size(False) is None
    assert rolling_size(True) == 1
    assert rolling_size("3") == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="--rolling"):
            rolling_size(bad)
    assert rolling_batches(["a", "b", "c"], 1) == [["a"], ["b"], ["c"]]
    assert rolling_batches(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert rolling_batches(["a"], 4) == [["a"]]


def test_logs_lines_are_bounded():
    assert check_lines(20) == 20 and check_lines("5") == 5
    for bad in (0, -3, "x", 10**6):
        with pytest.raises(ValueError, match="--lines"):
            check_lines(bad)


# --- the warm shutdown -------------------------------------------------------------------


def test_the_workers_stop_signal_goes_to_its_main_process_only():
    """TERM to the whole group would kill the pool processes and lose their running tasks."""
    inventory = make_inventory()
    plans = plan_deploy(target_of(inventory), fresh_facts(), PASSWORD)
    uploads = {u.target: u for p in plans for a in p.actions for u in a.uploads}
    config = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    config.read_string(uploads[Layout(inventory.project).celeryd_conf].content)
    worker = config["program:celery"]
    assert worker["stopsignal"] == "TERM"
    assert worker["stopasgroup"] == "false"
    assert worker["killasgroup"] == "true"          # after stopwaitsecs, nothing is left behind
    # the warm shutdown, then the cold one that hands the tasks back (Celery 5.7, tasks/shutdown.py)
    assert worker["stopwaitsecs"] == str(inventory.celery.stopwaitsecs + 30)


# --- the scripts, run here in sh against fakes -------------------------------------------


FAKE_SUPERVISORCTL = """\
#!{python}
# supervisorctl for the tests: programs and their pids in a JSON file, under a lock
import fcntl, json, os, sys
state_file = {state!r}
args = sys.argv[3:]  # after -c CONF
with open(state_file + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    with open(state_file) as f:
        state = json.load(f)
    action, names = args[0], args[1:] or sorted(state["programs"])
    rc = 0
    for name in names:
        p = state["programs"].get(name)
        if p is None:
            print(f"{{name}}: ERROR (no such process)"); rc = 4; continue
        if action == "status":
            if p["state"] == "RUNNING":
                print(f"{{name:<32}} RUNNING   pid {{p['pid']}}, uptime 0:00:{{p['pid'] % 60:02d}}")
            else:
                print(f"{{name:<32}} {{p['state']:<9}} Exited too quickly (process log may have details)"
                      if p["state"] == "FATAL" else f"{{name:<32}} {{p['state']:<9}} Not started")
                rc = 3
        if action in ("stop", "restart"):
            if p["state"] == "RUNNING":
                p["state"] = "STOPPED"; p["pid"] = None
                print(f"{{name}}: stopped")
            elif action == "stop":
                print(f"{{name}}: ERROR (not running)")
        if action in ("start", "restart"):
            if p["state"] == "RUNNING":
                print(f"{{name}}: ERROR (already started)")
            elif name in state.get("broken", []):
                p["state"] = "FATAL"; print(f"{{name}}: ERROR (spawn error)")
            else:
                state["next_pid"] += 1
                p["state"], p["pid"] = "RUNNING", state["next_pid"]
                print(f"{{name}}: started")
    with open(state_file, "w") as f:
        json.dump(state, f)
sys.exit(rc)
"""

# supervisor_status.py for the tests: what it prints, from the fake's JSON file (given as the socket)
FAKE_STATUS_PY = """\
import fcntl, json, sys
with open(sys.argv[1] + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    with open(sys.argv[1]) as f:
        state = json.load(f)
for name, p in sorted(state["programs"].items()):
    if p["state"] == "RUNNING":
        print(f"{name:<32} RUNNING   pid {p['pid']}, uptime 0:00:{p['pid'] % 60:02d}")
    else:
        print(f"{name:<32} {p['state']:<9} " + ("Exited too quickly (process log may have details)"
                                                 if p["state"] == "FATAL" else "Not started"))
"""

FAKE_CELERY = """\
#!/bin/sh
# celery for the tests: `inspect ping -d NODE,NODE` answers for each node, unless the file
# 'deaf' exists (then none), or the node is listed in the file 'deaf-nodes'
while [ "$1" != "-d" ]; do shift; done
echo "$2" > {home}/node
if [ -e {home}/deaf ]; then echo "Error: No nodes replied within time constraint" >&2; exit 69; fi
for node in $(printf '%s' "$2" | tr ',' ' '); do
    grep -qx "$node" {home}/deaf-nodes 2>/dev/null && continue
    printf -- '->  %s: OK\\n        pong\\n' "$node"
done
"""


class FakeHost:
    """A directory that stands in for a server: a fake virtualenv, supervisord, logs."""

    HOSTNAME = "web_01.example"

    def __init__(self, tmp_path, monkeypatch, programs=("celery", "celerybeat")):
        self.dir = tmp_path
        self.inventory = make_inventory(project__virtualenv=str(tmp_path / "venv"))
        self.host = self.inventory.hosts["prod"]
        self.state = tmp_path / "state.json"
        self.write_state({name: {"state": "RUNNING", "pid": 100 + i} for i, name in enumerate(programs)})
        bin_dir = tmp_path / "venv" / "bin"
        bin_dir.mkdir(parents=True)
        self.executable(bin_dir / "supervisorctl", FAKE_SUPERVISORCTL.format(python=sys.executable,
                                                                            state=str(self.state)))
        self.executable(bin_dir / "celery", FAKE_CELERY.format(home=tmp_path))
        path_dir = tmp_path / "path"
        path_dir.mkdir()
        # runuser -u USER -- CMD...: here, just CMD
        self.executable(path_dir / "runuser", '#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"\n')
        self.env = {**os.environ, "PATH": f"{path_dir}:{os.environ['PATH']}"}
        pidfile = tmp_path / "supervisord.pid"
        pidfile.write_text(f"{os.getpid()}\n")   # a live process: supervisord "runs"
        monkeypatch.setattr(Layout, "supervisord_pid", property(lambda _: str(pidfile)))
        monkeypatch.setattr(Layout, "worker_log", property(lambda _: str(tmp_path / "worker.log")))
        monkeypatch.setattr(Layout, "beat_log", property(lambda _: str(tmp_path / "beat.log")))
        monkeypatch.setattr(Layout, "programs_dir", property(lambda _: str(tmp_path / "programs")))
        # the status read over supervisord's socket: here, from the JSON file
        monkeypatch.setattr(Layout, "socket", property(lambda _: str(self.state)))
        real_text = operations.text
        monkeypatch.setattr(operations, "text", lambda name: FAKE_STATUS_PY if name == "supervisor_status.py"
                            else real_text(name))
        (tmp_path / "worker.log").write_text("".join(f"worker line {i}\n" for i in range(1, 31)))
        (tmp_path / "programs").mkdir()
        self.write_program_files()

    def write_program_files(self):
        """The program files as a deploy of the inventory to a host of that name writes them (a
        host name that is no valid node name as it stands: the worker's --hostname is made one)."""
        plans = plan_deploy(self.target, fresh_facts(hostname=self.HOSTNAME), PASSWORD)
        for upload in (u for plan in plans for a in plan.actions for u in a.uploads):
            if upload.target.startswith(str(self.dir / "programs")):
                Path(upload.target).write_text(upload.content)

    @staticmethod
    def executable(path, text):
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def write_state(self, programs, broken=()):
        self.state.write_text(json.dumps({"programs": programs, "next_pid": 500, "broken": list(broken)}))

    def programs(self):
        return json.loads(self.state.read_text())["programs"]

    @property
    def target(self):
        """The host's Target, built after the layout's paths were pointed here (as a run builds it)."""
        return Target.of(self.inventory, self.host)

    def run(self, operation):
        done = subprocess.run(["sh", "-c", operation.script], capture_output=True, text=True, env=self.env,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return operation.interpret(done.stdout)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    return FakeHost(tmp_path, monkeypatch)


def test_restart_changes_every_pid_and_waits_for_the_workers_ping(fake):
    outcome = fake.run(restart_operation(fake.target))
    assert not outcome.failed, outcome.lines
    assert outcome.changed
    assert outcome.before == {"celery": 100, "celerybeat": 101}
    assert outcome.after in ({"celery": 501, "celerybeat": 502}, {"celery": 502, "celerybeat": 501})
    assert {p["state"] for p in fake.programs().values()} == {"RUNNING"}
    # pinged by the name the worker was given in celeryd.conf
    assert node_name(FakeHost.HOSTNAME) == "celery@web-01.example"
    assert (fake.dir / "node").read_text().strip() == "celery@web-01.example"
    assert outcome.lines[0].startswith("restarted celery pid 100 -> ")
    assert outcome.lines[0].endswith("celery@web-01.example answers ping")


def test_restart_of_a_worker_that_does_not_come_back_fails_at_once_with_its_log(fake):
    # FATAL is final: no waiting for READY_TIMEOUT (the fake host's sh would time out first)
    fake.write_state({"celery": {"state": "RUNNING", "pid": 100}, "celerybeat": {"state": "RUNNING", "pid": 101}},
                     broken=["celery"])
    outcome = fake.run(restart_operation(fake.target))
    assert outcome.failed.startswith("celery is FATAL")
    assert "  worker line 30" in outcome.lines and "  worker line 15" not in outcome.lines


def test_start_of_a_program_supervisord_does_not_know_fails_at_once(fake):
    # the inventory's celerybeat was never deployed here: no waiting for READY_TIMEOUT (the
    # fake host's sh would time out first)
    fake.write_state({"celery": {"state": "RUNNING", "pid": 100}})
    outcome = fake.run(start_operation(fake.target))
    assert outcome.failed == "celerybeat is not configured in supervisord"


def test_restart_fails_when_the_new_worker_does_not_answer_ping(fake, monkeypatch):
    monkeypatch.setattr(operations, "READY_TIMEOUT", 1)
    (fake.dir / "deaf").touch()
    outcome = fake.run(restart_operation(fake.target))
    assert "does not answer celery inspect ping" in outcome.failed
    assert "No nodes replied" in outcome.failed


def test_restart_without_supervisord_fails_and_says_how_to_start_it(fake):
    (fake.dir / "supervisord.pid").unlink()
    outcome = fake.run(restart_operation(fake.target))
    assert outcome.failed == "supervisord is not running: `fab start-celery` starts it"
    assert fake.programs()["celery"]["pid"] == 100


def test_stop_then_start_brings_the_programs_back(fake):
    stopped = fake.run(stop_operation(fake.target))
    assert stopped.changed and not stopped.failed
    assert stopped.lines == ["stopped celery, celerybeat"]
    assert {p["state"] for p in fake.programs().values()} == {"STOPPED"}
    again = fake.run(stop_operation(fake.target))
    assert not again.changed and again.lines == ["ok (celery, celerybeat already stopped)"]
    started = fake.run(start_operation(fake.target))
    assert started.changed and not started.failed
    assert {p["state"] for p in fake.programs().values()} == {"RUNNING"}
    running = fake.run(start_operation(fake.target))
    assert not running.changed and running.lines[0].startswith("ok (already running: celery pid ")


def test_a_worker_only_host_restarts_only_its_worker(tmp_path, monkeypatch):
    fake = FakeHost(tmp_path, monkeypatch, programs=("celery",))
    inventory = make_inventory(project__virtualenv=str(tmp_path / "venv"),
                               hosts={"a": {"roles": ["broker", "beat"], "internal_address": "10.0.0.5"},
                                      "b": {"roles": ["worker"]}})
    outcome = fake.run(restart_operation(target_of(inventory, "b")))
    assert not outcome.failed and outcome.after == {"celery": 501}
    assert restart_operation(target_of(inventory, "a")).script    # beat restarts too
    none = make_inventory(hosts={"a": {"roles": ["broker"], "internal_address": "10.0.0.5"},
                                 "b": {"roles": ["worker", "beat"]}})
    skip = restart_operation(target_of(none, "a"))
    assert skip.script == "" and skip.skip == "no celery programs on this host"


def test_ping_names_the_worker_and_reports_its_answer(fake):
    outcome = fake.run(ping_operation(fake.target))
    assert not outcome.failed and outcome.lines[0].endswith("answers: pong")
    (fake.dir / "deaf").touch()
    outcome = fake.run(ping_operation(fake.target))
    assert outcome.failed.endswith("does not answer: Error: No nodes replied within time constraint")


def test_ping_asks_each_worker_by_the_node_name_its_program_file_gives(fake):
    # the host renamed since the deploy: the worker runs, and answers, by the name it was given
    conf = Path(fake.target.programs[0].config)
    conf.write_text(conf.read_text().replace("--hostname=celery@web-01.example", "--hostname=celery@old-name"))
    outcome = fake.run(ping_operation(fake.target))
    assert outcome.lines == ["celery@old-name answers: pong"]
    # no program file: the program is not deployed, and the line says so
    conf.unlink()
    (fake.dir / "deaf-nodes").write_text("celery@not-deployed\n")
    outcome = fake.run(ping_operation(fake.target))
    assert outcome.failed.startswith("celery@not-deployed does not answer")


def test_logs_show_the_last_lines_of_each_log(fake):
    outcome = fake.run(logs_operation(fake.target, 3))
    assert outcome.lines == [
        f"==> {fake.dir / 'worker.log'} <==", "worker line 28", "worker line 29", "worker line 30",
        f"==> {fake.dir / 'beat.log'} <==", "(cannot read it: no such file)",
    ]


def test_shutdown_of_a_host_whose_supervisord_is_down_changes_nothing(fake):
    (fake.dir / "supervisord.pid").unlink()
    outcome = fake.run(shutdown_operation(fake.target))
    assert outcome.lines == ["ok (supervisord is not running)"] and not outcome.changed


def test_every_script_is_valid_sh_and_quotes_what_it_is_given():
    inventory = make_inventory()
    # the inventory's validation allows no such path; the quoting does not rely on it
    inventory = replace(inventory, project=replace(inventory.project, path="/opt/it's/proj; rm -rf /"))
    target = Target.of(inventory, inventory.hosts["prod"])
    operations_ = [restart_operation(target), stop_operation(target), start_operation(target),
                   shutdown_operation(target), ping_operation(target), logs_operation(target, 5)]
    for operation in operations_:
        subprocess.run(["sh", "-n", "-c", operation.script], check=True)
    assert "--workdir '/opt/it'\"'\"'s/proj; rm -rf /'" in restart_operation(target).script


def test_status_of_a_deployed_host_from_the_step_tests_facts():
    inventory = make_inventory()
    status = host_status(target_of(inventory), deployed_facts(inventory))
    assert status.ok and [r.name for r in status.rows] == ["celery", "celerybeat", "redis-server"]


def test_rows_are_ok_only_when_running_or_up():
    assert ProgramRow("celery", "RUNNING").ok and ProgramRow("redis-server", "UP").ok
    assert not ProgramRow("redis-server", "DOWN").ok
    assert HostStatus("x").ok    # nothing to run and nothing wrong


# --- the rolling restart's order and its stop -------------------------------------------


def rolling_run(monkeypatch, outcomes: dict[str, str], size: int = 1, max_fail: int = 0):
    """day_two.rolling_restart with each host's restart replaced: 'ok', 'fails' (after connecting) or 'unreachable'."""
    from tasks import day_two
    from tasks.report import HostResult, Reporter

    calls = []

    def fake_run(c, host, op, reporter, quiet=False):
        calls.append(host.name)
        what = outcomes[host.name]
        return HostResult(host=host.name, ok=int(what == "ok"), changed=int(what == "ok"),
                          failed=int(what != "ok"), reached=what != "unreachable")

    monkeypatch.setattr(day_two, "run_operation", fake_run)
    inventory = make_inventory(hosts={"a": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.5"},
                                      **{name: {"roles": ["worker"]} for name in outcomes if name != "a"}})
    out = io.StringIO()
    build = lambda h: restart_operation(Target.of(inventory, h))  # noqa: E731
    results = day_two.rolling_restart(None, list(inventory.hosts.values()), build, Reporter(stream=out),
                                      parallel=size, size=size, max_fail=max_fail)
    return calls, {r.host: r for r in results}, out.getvalue()


def test_rolling_goes_host_by_host_in_order(monkeypatch):
    calls, results, out = rolling_run(monkeypatch, {"a": "ok", "b": "ok", "c": "ok"})
    assert calls == ["a", "b", "c"]
    assert "rolling restart, 1 host at a time: a -> b -> c" in out
    assert all(r.changed == 1 for r in results.values())


def test_rolling_stops_at_a_host_whose_worker_does_not_come_back(monkeypatch):
    calls, results, out = rolling_run(monkeypatch, {"a": "ok", "b": "fails", "c": "ok", "d": "ok"})
    assert calls == ["a", "b"]                      # c and d keep running, untouched
    assert results["c"].error == results["d"].error == "not restarted: b failed first"
    assert "c     restart      skipped: b failed, so the rolling restart stopped" in out


def test_rolling_passes_over_a_host_it_cannot_reach(monkeypatch):
    calls, results, _ = rolling_run(monkeypatch, {"a": "ok", "b": "unreachable", "c": "ok"})
    assert calls == ["a", "b", "c"]
    assert results["b"].failed and results["c"].changed


def test_rolling_in_batches(monkeypatch):
    calls, _, out = rolling_run(monkeypatch, {"a": "ok", "b": "ok", "c": "ok"}, size=2)
    assert sorted(calls[:2]) == ["a", "b"] and calls[2] == "c"
    assert "rolling restart, 2 hosts at a time: a, b -> c" in out


@pytest.mark.parametrize("programs,seconds,rc", [
    (("celery",), 60, 0),
    (("celery", "flower"), 60, 0),          # a group: its processes' rows count for it
    (("celery", "celerybeat"), 60, 1),      # FATAL: at once
    (("odd",), 60, 1),
    (("celery", "nosuch"), 60, 3),          # supervisord does not know it: at once
    (("idle",), 1, 2),                      # STOPPED, and the deadline comes
    (("cel",), 1, 3),                       # a name is matched whole, never as a prefix
])
def test_wait_running_against_a_real_supervisord(supervisord, programs, seconds, rc):
    """lib.sh's wait_running, as the deploy's verify and the day-two programs run it."""
    from tasks.scripts import shell_function
    from tasks.supervisor import status_function

    script = "\n".join([status_function(target_of(supervisord["inventory"]).layout), shell_function("wait_running"),
                        f'wait_running $(( $(date +%s) + {seconds} )) {" ".join(programs)}; echo "rc=$?"'])
    started = time.monotonic()
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == f"rc={rc}", done.stderr
    assert time.monotonic() - started < (seconds + 5 if rc == 2 else 5)


def test_verify_gives_up_at_once_on_a_fatal_program_and_shows_why(supervisord, tmp_path, monkeypatch):
    """The deploy's verify, run against a real supervisord whose celerybeat is FATAL: it fails in
    seconds (not at its 120 s deadline), names FATAL and shows the programs and the log tails."""
    from tasks.supervisor import verify_script

    for name in ("worker_log", "beat_log"):
        log = tmp_path / f"{name}.log"
        log.write_text(f"last line of the {name}\n")
        monkeypatch.setattr(Layout, name, property(lambda _, log=log: str(log)))
    inventory = supervisord["inventory"]
    script = verify_script(target_of(inventory), "/tmp", "nowhere", timeout=120)
    started = time.monotonic()
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and time.monotonic() - started < 10
    assert "FATAL" in done.stderr and "celerybeat" in done.stderr
    assert "last line of the beat_log" in done.stderr
    assert "ping" not in done.stderr        # the ping is only tried once every program runs
