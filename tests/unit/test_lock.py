"""The project's lock on a host, without SSH: its scripts run in a local sh against a lock
directory of the test's (flock(1), as on the servers), and the decisions read from what they
print; a lost connection's line. (The real thing: tests/integration/test_concurrent.py.)"""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
from fabric import Config
from invoke.runners import Result

from tasks.apply import failure_text
from tasks.bounds import DEFAULT
from tasks.host_errors import LOST, ConnectionLost, HostError
from tasks.inventory import HostSpec
from tasks.lock import (
    BUSY,
    HOLDER,
    LOCKING_TASKS,
    READY,
    Holder,
    Lock,
    LockBusy,
    busy_holder,
    busy_message,
    holding,
    locked,
    parse_holder,
    registered,
    waiting_line,
)
from tasks.operations import (
    broker_restart_operation,
    logs_operation,
    ping_operation,
    restart_operation,
    shutdown_operation,
    start_operation,
    stop_operation,
)
from tasks.remote import Remote
from tasks.shell import PROGRESS
from tasks.status import status_operation
from tasks.target import Target

from .conftest import make_inventory

TIMED = "timeout -k 5 60 sh -c "


def lock_in(tmp_path, wait: int = 5, task: str = "deploy") -> Lock:
    return Lock("my_proj", task, wait, "alice@laptop", directory=str(tmp_path / "lockdir"))


def run(script: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, **kwargs)


class HeldElsewhere:
    """Another run holding the lock (flock(2) on the file, as flock(1) takes it)."""

    def __init__(self, lock: Lock, info: str = "pid=4242 since=1000 task=deploy from=bob@ci"):
        os.makedirs(lock.directory, exist_ok=True)
        self.fd = os.open(lock.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        with open(lock.path, "w") as f:
            f.write(info + "\n")

    def release(self) -> None:
        os.close(self.fd)


def free(lock: Lock) -> bool:
    fd = os.open(lock.path, os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# --- the scripts, for real --------------------------------------------------------------------


def test_a_free_lock_is_taken_at_once_and_says_who_holds_it(tmp_path):
    lock = lock_in(tmp_path)
    done = run(locked(lock)(TIMED + "'echo ran'"))
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr
    holder = parse_holder(open(lock.path).read())
    assert (holder.task, holder.origin) == ("deploy", "alice@laptop") and holder.pid and holder.since
    assert oct(os.stat(lock.directory).st_mode & 0o777) == "0o755"
    assert free(lock)                     # dropped with the command


def test_a_held_lock_is_waited_for_with_a_line_naming_the_holder_then_refused(tmp_path):
    lock = lock_in(tmp_path, wait=2)
    other = HeldElsewhere(lock)
    started = time.monotonic()
    done = run(locked(lock)(TIMED + "'echo ran'"))
    other.release()
    assert 1.5 < time.monotonic() - started < 10
    assert done.returncode == BUSY and "ran" not in done.stdout
    said = [line[len(PROGRESS):] for line in done.stdout.splitlines() if line.startswith(PROGRESS)]
    assert len(said) == 1
    assert waiting_line(said[0], 2).startswith(
        "waiting for another fabcelery run on this host to finish: fab deploy from bob@ci (pid 4242 on the host), "
        "since 1970-01-01 00:16:40 UTC (")
    holder = busy_holder(done.returncode, done.stdout)
    assert (holder.pid, holder.task, holder.origin, holder.since) == (4242, "deploy", "bob@ci", 1000)
    assert busy_message(holder, 2).startswith(
        "another fabcelery run on this host did not finish within 2 s (bounds.lock): fab deploy from bob@ci (pid 4242 "
        "on the host), since 1970-01-01 00:16:40 UTC (")
    assert busy_message(holder, 2).endswith("Nothing was changed here; run again once it is done")


def test_a_run_that_ends_while_we_wait_hands_the_lock_over(tmp_path):
    lock = lock_in(tmp_path, wait=30)
    other = HeldElsewhere(lock)
    proc = subprocess.Popen(["sh", "-c", locked(lock)(TIMED + "'echo ran'")], stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    assert proc.poll() is None            # still waiting
    other.release()
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out.endswith("ran\n")


def test_without_a_wait_a_held_lock_is_refused_at_once(tmp_path):
    lock = lock_in(tmp_path, wait=0)
    other = HeldElsewhere(lock)
    started = time.monotonic()
    done = run(locked(lock)(TIMED + "'echo ran'"))
    other.release()
    assert done.returncode == BUSY and time.monotonic() - started < 1
    assert "(bounds.lock is 0: no wait)" in busy_message(busy_holder(done.returncode, done.stdout), 0)


def test_what_the_command_starts_does_not_inherit_the_lock(tmp_path):
    lock = lock_in(tmp_path)
    # a daemon the command starts (supervisord without systemd) must not keep the lock
    done = run(locked(lock)(TIMED + "'[ ! -e /proc/self/fd/9 ] && echo no-fd-9'"))
    assert done.stdout == "no-fd-9\n", done.stderr


def test_the_probe_holds_the_lock_until_its_stdin_closes(tmp_path):
    lock = lock_in(tmp_path)
    proc = subprocess.Popen(["sh", "-c", holding(lock)(TIMED + "'echo @@probe 0 eA=='")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "@@probe 0 eA==\n"
    assert proc.stdout.readline() == READY + "\n"
    time.sleep(0.5)
    assert proc.poll() is None and not free(lock)      # held after the probe ...
    proc.stdin.close()                                  # ... until the channel closes
    assert proc.wait(timeout=5) == 0
    assert free(lock)


def test_a_failed_probe_does_not_hold_the_lock(tmp_path):
    lock = lock_in(tmp_path)
    done = run(holding(lock)(TIMED + "'exit 3'"), stdin=subprocess.PIPE)
    assert done.returncode == 3 and READY not in done.stdout and free(lock)


def test_a_command_an_earlier_run_left_running_is_waited_for(tmp_path):
    lock = lock_in(tmp_path, wait=30)
    left = subprocess.Popen(["sh", "-c", registered(lock)(TIMED + "'sleep 3'", "pip install celery")])
    threading.Thread(target=left.wait).start()          # reaped when it ends, as on a server
    time.sleep(0.5)
    started = time.monotonic()
    done = run(locked(lock)(TIMED + "'echo ran'"))
    assert done.returncode == 0 and done.stdout.endswith("ran\n")
    assert time.monotonic() - started > 1.5 and left.poll() is not None
    said = [line[len(PROGRESS):] for line in done.stdout.splitlines() if line.startswith(PROGRESS)]
    assert waiting_line(said[0], 30).startswith("waiting for a command to finish: pip install celery (pid ")
    assert ("left running by an earlier fabcelery run that ended before it (its connection was lost); waiting up to "
            "30 s (bounds.lock)") in waiting_line(said[0], 30)
    assert os.listdir(lock.runs) == []                 # its record went with it


def test_a_leftover_that_outlives_the_bound_is_named_and_nothing_runs(tmp_path):
    lock = lock_in(tmp_path, wait=1)
    left = subprocess.Popen(["sh", "-c", registered(lock)(TIMED + "'sleep 8'", "pip install celery")])
    time.sleep(0.5)
    done = run(locked(lock)(TIMED + "'echo ran'"))
    left.kill()
    assert done.returncode == BUSY and "ran" not in done.stdout
    message = busy_message(busy_holder(done.returncode, done.stdout), 1)
    assert message.startswith("a command of an earlier fabcelery run did not finish within 1 s (bounds.lock): "
                              "pip install celery (pid ")


def test_a_record_of_a_command_that_is_gone_is_swept(tmp_path):
    lock = lock_in(tmp_path)
    os.makedirs(lock.runs)
    with open(f"{lock.runs}/999999", "w") as f:        # killed with -9: its record stayed
        f.write("12345\npip install x\n")
    done = run(locked(lock)(TIMED + "'echo ran'"))
    assert done.stdout == "ran\n" and os.listdir(lock.runs) == []


# --- decisions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("exited", "stdout", "busy"), [
    (BUSY, HOLDER + "pid=1 since=2 task=deploy from=a@b now=5\n", True),
    (BUSY, "the command's own exit status 75, and no holder line\n", False),
    (1, HOLDER + "pid=1 since=2 task=deploy from=a@b now=5\n", False),
    (0, "", False),
])
def test_busy_is_decided_by_the_exit_status_and_the_holder_line_together(exited, stdout, busy):
    assert (busy_holder(exited, stdout) is not None) is busy


@pytest.mark.parametrize(("text", "described"), [
    ("pid=7 since=0 task=undeploy from=root@ci now=61",
     "fab undeploy from root@ci (pid 7 on the host), since 1970-01-01 00:00:00 UTC (61 s ago)"),
    ("", "another fabcelery run (it has not said who it is yet)"),
    ("pid=7 task=restart-celery from=x\x1b[31m@y", "fab restart-celery from x??31m@y (pid 7 on the host)"),
])
def test_the_holder_is_described_from_what_it_wrote_and_nothing_else_reaches_the_terminal(text, described):
    assert parse_holder(text).describe() == described


def test_a_wait_line_is_only_for_the_lock_scripts_own_progress():
    assert waiting_line("waiting for apt's lock, held by x", 600) is None


def test_a_busy_lock_is_a_host_error():
    assert isinstance(LockBusy(Holder(), 600), HostError)


@pytest.mark.parametrize(("build", "task"), [
    (lambda i, h: restart_operation(Target.of(i, h)), "restart-celery"),
    (lambda i, h: start_operation(Target.of(i, h)), "start-celery"),
    (lambda i, h: stop_operation(Target.of(i, h)), "stop-celery"),
    (lambda i, h: shutdown_operation(Target.of(i, h)), "shutdown"),
    (lambda i, h: broker_restart_operation(Target.of(i, h)), "restart-broker"),
    (lambda i, h: status_operation(Target.of(i, h)), ""),
    (lambda i, h: ping_operation(Target.of(i, h)), ""),
    (lambda i, h: logs_operation(Target.of(i, h), 20), ""),
])
def test_the_tasks_that_change_a_host_take_the_lock_and_the_ones_that_read_do_not(build, task):
    inventory = make_inventory()
    assert build(inventory, inventory.hosts["prod"]).locks == task
    assert not task or task in LOCKING_TASKS


def test_a_deploy_waits_ten_minutes_by_default():
    assert DEFAULT.lock == 600


# --- a lost connection ------------------------------------------------------------------------


class Transport:
    def __init__(self, active: bool):
        self.active = active

    def is_active(self):
        return self.active


class FakeConnection:
    def __init__(self, result, active: bool):
        self.result, self.user = result, "deploy"
        self.client = SimpleNamespace(get_transport=lambda: Transport(active))
        self.config = Config()

    def run(self, command, **kwargs):
        return self.result


def remote_with(conn) -> Remote:
    remote = Remote(HostSpec("prod"), Config())
    remote.conn = conn
    return remote


def test_a_command_whose_connection_ended_says_the_connection_was_lost():
    remote = remote_with(FakeConnection(Result(stdout="", stderr="", exited=-1), active=False))
    with pytest.raises(ConnectionLost) as error:
        remote.run_root("apt-get install", "install logrotate, redis-server", timeout=900)
    assert str(error.value) == f"install logrotate, redis-server: {LOST}"
    assert failure_text(error.value, "deploy") == (
        "install logrotate, redis-server: the connection to the host was lost while this was under way; the next "
        "deploy completes the work")
    assert failure_text(error.value, "undeploy").endswith("; the next undeploy completes the work")


def test_exit_status_minus_one_on_a_live_connection_is_not_called_a_lost_connection():
    remote = remote_with(FakeConnection(Result(stdout="", stderr="", exited=-1), active=True))
    with pytest.raises(HostError) as error:
        remote.run_root("x", "install logrotate", timeout=900)
    assert not isinstance(error.value, ConnectionLost)
    assert str(error.value) == "install logrotate: exit status -1"


def test_other_failures_keep_their_own_text():
    assert failure_text(HostError("probe: sudo needs a password")) == "probe: sudo needs a password"
    assert failure_text(ValueError("x")) == "ValueError: x"


def test_bounds_lock_is_set_in_the_inventory_and_may_be_0(tmp_path):
    from tasks.inventory import InventoryError
    from tasks.inventory_load import parse_inventory

    from .conftest import inventory_data

    assert parse_inventory(inventory_data(bounds={"lock": 0}), tmp_path / "inventory.yaml").bounds.lock == 0
    assert parse_inventory(inventory_data(bounds={"lock": 30}), tmp_path / "inventory.yaml").bounds.lock == 30
    with pytest.raises(InventoryError, match=r"'bounds.lock' must be from 0 to 86400; got -1"):
        parse_inventory(inventory_data(bounds={"lock": -1}), tmp_path / "inventory.yaml")
