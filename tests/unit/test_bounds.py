"""Bounds and clean ends, without SSH: the bound each kind of action gets, the scripts that
wait for apt's lock and notice a changed virtualenv (run in a local sh), the restart that a
changed virtualenv decides (facts in, actions out), Ctrl-C in a step, and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from fabric import Config
from invoke.runners import Result

from tasks import interrupt
from tasks.apply import run_step
from tasks.apt import LOCK_EXIT, install_script
from tasks.bounds import DEFAULT, Bounds, action_bound, local_bound
from tasks.deploy import plan_deploy
from tasks.host_errors import HostError
from tasks.inventory import HostSpec, InventoryError
from tasks.layout import Layout
from tasks.plan import EVENT, Action, Event, StepPlan
from tasks.remote import Remote
from tasks.report import HostResult, Reporter
from tasks.shell import PROGRESS
from tasks.streams import ProgressStream

from .conftest import PASSWORD, deployed_facts, fresh_facts, inventory_data, make_inventory, target_of
from .sudo_stub import run_with_stub_sudo

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
CTL = "/opt/arches/venv/bin/supervisorctl -c /etc/supervisor/my_proj-supervisord.conf"


# --- the bound of each kind of action ---------------------------------------------------------

@pytest.mark.parametrize("step,quick,seconds,named", [
    ("system", False, 120 + 900, "bounds.apt_lock + bounds.apt"),     # apt, after waiting for its lock
    ("system", True, 60, "bounds.quick"),                              # useradd, mkdir
    ("broker", False, 180, "bounds.broker"),
    ("broker", True, 60, "bounds.quick"),
    ("python", False, 900, "bounds.pip"),
    ("configs", False, 60, "bounds.quick"),
    ("supervisord", False, 120 + 600 + 60, "bounds.restart + celery.stopwaitsecs + 60 s for beat"),
    ("supervisord", True, 60, "bounds.quick"),                         # daemon-reload, enable
    ("verify", False, 180, "bounds.verify"),
])
def test_each_kind_of_action_has_its_bound(step, quick, seconds, named):
    assert action_bound(DEFAULT, step, quick, stopwaitsecs=600) == (seconds, named)


def test_the_inventory_changes_a_bound_and_refuses_a_bad_one(tmp_path):
    from tasks.inventory_load import parse_inventory

    inventory = parse_inventory(inventory_data(bounds={"apt_lock": 5, "pip": 1800}), tmp_path / "inventory.yaml")
    assert inventory.bounds == Bounds(apt_lock=5, pip=1800)
    assert action_bound(inventory.bounds, "python", False) == (1800, "bounds.pip")
    with pytest.raises(InventoryError, match=r"'bounds.pipp' is not a known key; did you mean 'pip'\?"):
        parse_inventory(inventory_data(bounds={"pipp": 5}), tmp_path / "inventory.yaml")
    with pytest.raises(InventoryError, match=r"'bounds.probe' must be from 1 to 86400; got 0"):
        parse_inventory(inventory_data(bounds={"probe": 0}), tmp_path / "inventory.yaml")


def test_the_apt_step_waits_as_long_as_its_lock_bound_allows():
    inventory = make_inventory(bounds={"apt_lock": 7})
    system = steps(inventory, fresh_facts())["system"]
    assert system.actions[0].summary == "install python3, python3-venv, logrotate, redis-server"
    assert '[ "$_total" -ge 7 ]' in system.actions[0].script


# --- what reaches the server: `timeout`, and the messages when a bound is hit -----------------

class FakeConnection:
    def __init__(self, result):
        self.user, self.result, self.calls = "deploy", result, []
        self.config = SimpleNamespace(sudo=SimpleNamespace(password=None))

    def run(self, command, **kwargs):
        self.calls.append((command, kwargs))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def remote_with(conn, bounds: Bounds | None = None) -> Remote:
    remote = Remote(HostSpec("prod"), Config(), bounds=bounds)
    remote.conn = conn
    return remote


def test_the_server_stops_a_script_at_its_bound_and_we_wait_a_little_longer(tmp_path):
    conn = FakeConnection(Result(stdout="ok", exited=0))
    remote_with(conn).run_root("pip install x", "pip install x", timeout=900, bound="bounds.pip")
    command, options = conn.calls[0]
    assert run_with_stub_sudo(command, tmp_path).program == "timeout -k 5 900 sh -c 'pip install x'"
    assert options["timeout"] == local_bound(900) == 920


@pytest.mark.parametrize("status", [124, 137])    # TERM at the bound, or KILL 5 s later
def test_a_bound_hit_on_the_server_is_one_line_naming_the_action_and_the_bound(status):
    conn = FakeConnection(Result(stdout="", stderr="", exited=status))
    with pytest.raises(HostError) as error:
        remote_with(conn).run_root("pip install x", "pip install celery", timeout=900, bound="bounds.pip")
    assert str(error.value) == ("pip install celery: did not finish within 900 s (bounds.pip); it was stopped on "
                                "the host")


def test_a_host_that_stops_answering_is_named_so():
    from invoke.exceptions import CommandTimedOut

    conn = FakeConnection(CommandTimedOut(Result(exited=-1), timeout=80))
    remote = remote_with(conn)
    with pytest.raises(HostError, match=r"^probe: no answer from the host within 80 s$"):
        remote.run_root("true", "probe", timeout=60)
    remote.silent = "the host stopped answering: nothing came back for 30 s (SSH keepalive every 10 s)"
    with pytest.raises(HostError, match=r"^probe: the host stopped answering: nothing came back for 30 s"):
        remote.run_root("true", "probe", timeout=60)


class SilentTransport:
    """A transport whose host says nothing: what the keepalive sends, and whether it closed it."""

    def __init__(self):
        self.closed, self.sent = False, []
        self.clear_to_send = SimpleNamespace(is_set=lambda: True)

    def is_active(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True

    def _send_user_message(self, message) -> None:
        self.sent.append(message)


def test_by_default_a_silent_host_is_given_up_after_30_s():
    remote = remote_with(FakeConnection(Result()))
    transport, interval = SilentTransport(), remote.bounds.keepalive
    remote._last_heard = time.monotonic() - 29
    assert remote._keepalive(transport, interval) and transport.sent and not transport.closed   # asks, waits
    remote._last_heard = time.monotonic() - 30
    assert not remote._keepalive(transport, interval) and transport.closed
    assert remote.silent == ("the host stopped answering: nothing came back for 30 s (SSH keepalive every 10 s, "
                             "bounds.keepalive)")


def test_progress_lines_are_passed_on_as_they_come_and_other_output_is_not():
    seen = []
    stream = ProgressStream(seen.append)
    for chunk in ["Reading package lists...\n" + PROGRESS + "waiting for apt's ", "lock, held by x (pid 1), 0 s\n",
                  "more\n" + PROGRESS + "second"]:
        stream.write(chunk)
    assert seen == ["waiting for apt's lock, held by x (pid 1), 0 s"]


# --- apt's lock, with an apt-get that finds it held --------------------------------------------

def fake_apt(tmp_path: Path, held_for: int) -> dict:
    """An apt-get on PATH that says the lock is held for its first `held_for` calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        n=$(cat {tmp_path}/calls 2>/dev/null || echo 0); echo $((n + 1)) > {tmp_path}/calls
        echo "$@" >> {tmp_path}/args
        if [ "$n" -lt {held_for} ]; then
          echo 'E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812 (unattended-upgr)' >&2
          echo 'N: Be aware that removing the lock file is not a solution and may break your system.' >&2
          exit 100
        fi
        """))
    (bin_dir / "apt-get").chmod(0o755)
    (bin_dir / "sleep").write_text("#!/bin/sh\n")      # waiting costs the test no time ...
    (bin_dir / "sleep").chmod(0o755)
    clock = tmp_path / "clock"                        # ... and a clock that moves 3 s a call
    (bin_dir / "date").write_text(f"#!/bin/sh\nt=$(cat {clock} 2>/dev/null || echo 1000); echo $((t + 3)) > {clock}; "
                                  "echo $t\n")
    (bin_dir / "date").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_apt_waits_while_the_lock_is_held_and_says_who_holds_it(tmp_path):
    env = fake_apt(tmp_path, held_for=5)
    done = subprocess.run(["sh", "-c", install_script(["redis-server"], 120)], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    said = [line.removeprefix(PROGRESS) for line in done.stdout.splitlines()]
    assert said[0] == "waiting for apt's lock, held by unattended-upgr (pid 812), 0 s"
    assert all(line.startswith("waiting for apt's lock, held by unattended-upgr (pid 812), ") for line in said)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[-1] == "-o DPkg::Lock::Timeout=0 install -y -qq --no-install-recommends redis-server"


def test_apt_gives_up_at_its_bound_with_one_sentence(tmp_path):
    env = fake_apt(tmp_path, held_for=1000)
    done = subprocess.run(["sh", "-c", install_script(["redis-server"], 10)], env=env, capture_output=True,
                          text=True)
    assert done.returncode == LOCK_EXIT
    assert done.stderr.strip().splitlines()[-1] == (
        "waiting for apt's lock, held by unattended-upgr (pid 812), gave up after 12 s (bounds.apt_lock, "
        "--apt-lock-timeout); nothing was installed")
    assert all("install" not in line for line in (tmp_path / "args").read_text().splitlines())   # update never got it


def test_an_apt_error_that_is_not_the_lock_fails_at_once(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package redis-servr' >&2\nexit 100\n")
    (bin_dir / "apt-get").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", install_script(["redis-servr"], 120)], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stderr.strip(), done.stdout) == (100, "E: Unable to locate package redis-servr", "")


def test_an_apt_cut_off_half_way_is_completed_with_dpkg_configure_first(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ ! -e {tmp_path}/configured ]; then
          echo "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem." >&2
          exit 100
        fi
        echo "$@" >> {tmp_path}/args
        """))
    (bin_dir / "dpkg").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/dpkg; touch {tmp_path}/configured\n")
    for tool in ("apt-get", "dpkg"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", install_script(["redis-server"], 120)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dpkg").read_text() == "--configure -a\n"
    assert len((tmp_path / "args").read_text().splitlines()) == 2        # update, install


# --- a changed virtualenv restarts its programs, once ------------------------------------------

def steps(inventory, facts):
    return {p.name: p for p in plan_deploy(target_of(inventory), facts, PASSWORD)}


def new_requirements(inventory, facts):
    """The facts of a host whose recorded pip requirements differ (the project's file changed)."""
    facts.contents[Layout(inventory.project).python_stamp] = "celery[redis]==5.6.0\n"
    return facts


def restarts(plan: StepPlan) -> list[tuple[str, Event | None]]:
    return [(a.summary, a.when) for a in plan.actions]


@pytest.mark.parametrize("case,change,expected", [
    ("pip runs: a restart of both, if pip changes the virtualenv", {},
     [("restart celery, celerybeat (pip changed the virtualenv; warm shutdown)", Event.VENV_CHANGED)]),
    ("the worker's config changed too: reread/update restarts it, the restart is beat's only",
     {"celery__concurrency": 4},
     [("reread and update (celery)", None),
      ("restart celerybeat (pip changed the virtualenv; warm shutdown)", Event.VENV_CHANGED)]),
    ("settings_local.py changed: both restart for it, not twice", {"settings": True},
     [("restart celery, celerybeat (settings_local.py changed)", None)]),
])
def test_a_pip_run_plans_one_restart_of_what_runs_from_the_virtualenv(case, change, expected):
    before = make_inventory()
    after = make_inventory(**{k: v for k, v in change.items() if k != "settings"})
    facts = new_requirements(after, deployed_facts(before))
    if change.get("settings"):       # someone removed the managed block: the deploy writes it again
        facts.contents[Layout(after.project).settings_local] = "SECRET_KEY = 'x'\n"
    plans = steps(after, facts)
    assert plans["python"].actions[-1].summary.startswith("pip install")
    assert restarts(plans["supervisord"]) == expected, case
    assert plans["verify"].changed                      # then they must come back
    assert plans["supervisord"].after_success == f"rm -f {target_of(after).layout.pending_apply}"


def test_no_restart_without_a_pip_run_or_when_supervisord_is_not_running():
    inventory = make_inventory()
    assert not steps(inventory, deployed_facts(inventory))["supervisord"].changed
    stopped = new_requirements(inventory, deployed_facts(inventory))
    object.__setattr__(stopped, "supervisord_running", False)
    assert [a.when for a in steps(inventory, stopped)["supervisord"].actions] == [None]   # the start only


def test_a_virtualenv_changed_by_a_deploy_cut_off_before_the_restart_restarts_unconditionally():
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    facts.contents[target_of(inventory).layout.pending_apply] = "virtualenv\n"
    plans = steps(inventory, facts)
    assert not plans["python"].changed
    assert restarts(plans["supervisord"]) == [("restart celery, celerybeat (the virtualenv changed; warm shutdown)",
                                               None)]


def test_the_pip_action_reports_and_records_a_changed_virtualenv(tmp_path):
    inventory = make_inventory()
    script = steps(inventory, new_requirements(inventory, deployed_facts(inventory)))["python"].actions[-1].script
    venv, pending = tmp_path / "venv", tmp_path / "pending"
    site = venv / "lib" / "python3.13" / "site-packages"
    site.mkdir(parents=True)
    (site / "celery-5.6.0.dist-info").mkdir()
    pip_line = next(line for line in script.splitlines() if "/bin/pip" in line)
    script = (script.replace(str(target_of(inventory).layout.pending_apply), str(pending))
              .replace("/opt/arches/venv/lib", str(venv / "lib"))
              .replace(Layout(inventory.project).python_stamp, str(tmp_path / "stamp")))
    unchanged = subprocess.run(["sh", "-c", script.replace(pip_line, "true &&")], capture_output=True, text=True)
    assert unchanged.returncode == 0 and unchanged.stdout == "" and not pending.exists()
    upgrade = f"mv {site}/celery-5.6.0.dist-info {site}/celery-5.7.0.dist-info &&"
    changed = subprocess.run(["sh", "-c", script.replace(pip_line, upgrade)], capture_output=True, text=True)
    assert changed.returncode == 0 and changed.stdout == EVENT + Event.VENV_CHANGED + "\n"
    assert pending.read_text() == "virtualenv\n"
    failed = subprocess.run(["sh", "-c", script.replace(pip_line, "false &&")], capture_output=True, text=True)
    assert failed.returncode != 0


def test_the_pending_record_of_configs_keeps_the_virtualenvs_line(tmp_path):
    inventory = make_inventory(celery__concurrency=4)
    record = steps(inventory, deployed_facts(make_inventory()))["configs"].record_pending
    pending = tmp_path / "pending"
    record = record.replace(target_of(inventory).layout.pending_apply, str(pending))
    for before, after in [(None, "/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf\n"),
                          ("/etc/x\n", "/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf\n"),
                          ("virtualenv\n", "virtualenv\n/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf\n")]:
        pending.unlink(missing_ok=True)
        if before is not None:
            pending.write_text(before)
        done = subprocess.run(["sh", "-ec", record], capture_output=True, text=True)   # as install_script: set -e
        assert done.returncode == 0, done.stderr
        assert pending.read_text() == after


# --- a step at Ctrl-C, and an action that waits for an event ----------------------------------

class RecordingRemote:
    def __init__(self, stdout=""):
        self.ran, self.stdout = [], stdout

    def run_root(self, script, summary, **kwargs):
        self.ran.append(summary)
        return SimpleNamespace(stdout=self.stdout, stderr="", exited=0)


@pytest.fixture
def no_interrupt():
    interrupt.STOP.clear()
    yield interrupt.STOP
    interrupt.STOP.clear()


def run(plan, remote, events=None):
    inventory = make_inventory()
    result = HostResult(host="prod")
    ok = run_step(plan, remote, target_of(inventory), Reporter(stream=open(os.devnull, "w")), result,
                  False, events if events is not None else set())
    return ok, result


def test_after_ctrl_c_a_step_starts_no_action(no_interrupt):
    remote = RecordingRemote()
    no_interrupt.set()
    ok, result = run(StepPlan("configs", actions=(Action("a", "true"), Action("b", "true"))), remote)
    assert (ok, remote.ran, result.interrupted) == (False, [], True)


def test_a_second_ctrl_c_quits_at_once_with_exit_status_130():
    # a process of its own: the second SIGINT ends it (os._exit) in the middle of a long wait
    program = textwrap.dedent("""\
        import os, signal, time
        from tasks.interrupt import STOP, interruptible
        with interruptible():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            print("first: stop set" if STOP.is_set() else "first: stop not set", flush=True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
            print("still running", flush=True)
        """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=20)
    assert (done.returncode, done.stdout) == (130, "first: stop set\n"), done
    assert "Ctrl-C: no new action will start" in done.stderr
    assert "Ctrl-C again: quitting now" in done.stderr


def test_an_action_that_waits_for_an_event_runs_only_once_it_came(no_interrupt):
    restart = Action("restart celery", "restart", when=Event.VENV_CHANGED, note="restarted celery: pip changed it")
    remote = RecordingRemote()
    ok, result = run(StepPlan("supervisord", actions=(restart,)), remote)
    assert ok and remote.ran == [] and result.changed == 0 and result.notes == []
    events: set[str] = set()
    pip = RecordingRemote(stdout=f"Collecting x\n{EVENT}{Event.VENV_CHANGED}\n")
    run(StepPlan("python", actions=(Action("pip install x", "pip"),)), pip, events)
    assert events == {Event.VENV_CHANGED}
    ok, result = run(StepPlan("supervisord", actions=(restart,)), remote, events)
    assert ok and remote.ran == ["restart celery"] and result.changed == 1
    assert result.notes == ["restarted celery: pip changed it"]


# --- the command line ---------------------------------------------------------------------------

def fab(tmp_path: Path, *args: str, shell: str | None = None) -> subprocess.CompletedProcess:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(inventory_data(hosts={"nowhere.invalid": {}})))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABCELERY_", "FABRIC_"))}
    env.update(FABCELERY_INVENTORY=str(inventory), HOME=str(tmp_path))
    command = shell or " ".join([FAB, "-r", str(ROOT), *args])
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60)
    assert "Traceback" not in done.stdout + done.stderr
    return done


@pytest.mark.parametrize("args,said", [
    (["deploy", "--parallel", "abc"], "fab: --parallel takes a whole number, not 'abc'"),
    (["deploy", "--parallel"], "fab: --parallel needs a value"),
    (["deploy", "--nope"], "fab: No idea what '--nope' is!"),
    (["--nope"], "fab: No idea what '--nope' is!"),
    (["status", "--parallel", "0"], "--parallel must be a number of hosts, 1 or more; got 0"),
    (["deploy", "--apt-lock-timeout", "soon"], "--apt-lock-timeout must be a number of seconds from 0 to 86400; "
                                               "got 'soon'"),
    (["logs", "--lines", "-3"], "--lines must be a number from 1 to 10000, not '-3'"),
])
def test_a_bad_option_is_one_line_and_exit_status_2(tmp_path, args, said):
    done = fab(tmp_path, *args)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(said)
    assert done.stdout == ""


# (a bare `fab --help` is printed before the fabfile is loaded: out of our reach)
@pytest.mark.parametrize("args", [["--list"], ["--help", "deploy"], ["--list", "--list-format", "json"]])
def test_a_closed_pipe_ends_quietly(tmp_path, args):
    # `yes | head` style: the reader takes a line and goes; fab's later lines meet a closed pipe
    command = f"{FAB} -r {ROOT} {' '.join(args)} | (head -c 1 >/dev/null; exec 0<&-; sleep 0.5); " \
              "echo ${PIPESTATUS[0]}"
    done = fab(tmp_path, shell=command)
    assert done.stderr == "" and done.stdout.strip() in ("0", "141")


def test_fab_list_then_head_prints_one_line_and_nothing_else(tmp_path):
    done = fab(tmp_path, shell=f"{FAB} -r {ROOT} --list | head -1")
    assert (done.returncode, done.stdout, done.stderr) == (0, "Available tasks:\n", "")
