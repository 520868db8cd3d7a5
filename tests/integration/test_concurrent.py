"""One run at a time, and a lost connection that says so (real servers).

- Two deploys started together, on a fresh Debian 13 host and again on the deployed host:
  one waits, saying for whom; both end well; the next deploy has nothing to do.
- On Debian 12, the SSH session (sshd's process of the deploy's connection) killed while
  apt-get runs, and again while pip runs: the host's line names the action, the lost
  connection and that the next deploy completes the work; the lock is free at once; the
  next deploy heals the host (after what the lost run left running has ended) and the one
  after it is changed=0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tasks.host_errors import LOST
from tasks.lock import lock_path

from .conftest import ROOT, FabRun, Project, install_example_project, wait_for

LOCK = lock_path("demo_proj")
WAITS = re.compile(r"^(\S+)  lock         waiting for another fabcelery run on this host to finish: fab deploy from "
                   r"\S+ \(pid (\d+) on the host\), since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\); waiting "
                   r"up to 600 s \(bounds\.lock\)$", re.M)
# the deploy's own connection: sshd's process for the login user's session (sshd-session on Debian 13)
KILL_SESSION = "pkill -KILL -f '^sshd(-session)?: deploy@notty'"


def host_state(fleet, tmp_path_factory, name: str, suite: str):
    host = fleet.start(name, suite=suite)
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    return {"fleet": fleet, "host": host, "project": project, "name": name}


@pytest.fixture(scope="module")
def trixie(fleet, tmp_path_factory):
    state = host_state(fleet, tmp_path_factory, "lock13", "trixie")
    yield state
    fleet.remove(state["host"])


@pytest.fixture(scope="module")
def bookworm(fleet, tmp_path_factory):
    state = host_state(fleet, tmp_path_factory, "lost12", "bookworm")
    yield state
    fleet.remove(state["host"])


def sh(state, command: str, check: bool = True) -> str:
    return state["fleet"].exec(state["host"], command, check=check).stdout.strip()


def start_fab(state, *args: str) -> subprocess.Popen:
    command = [str(sys.executable).rsplit("/", 1)[0] + "/fab", "-r", str(ROOT), "-S",
               str(state["fleet"].ssh_config_path), "-H", state["name"], *args]
    environment = {**os.environ, "FABCELERY_INVENTORY": str(state["project"].inventory_path)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)


def finish(proc: subprocess.Popen, timeout: int = 900) -> FabRun:
    output, _ = proc.communicate(timeout=timeout)
    print(f"$ {' '.join(proc.args)}\n{output}")
    return FabRun(proc.returncode, output)


def lock_free(state) -> bool:
    return sh(state, f"flock -n {LOCK} true && echo free", check=False) == "free"


def two_deploys_at_once(state) -> tuple[FabRun, FabRun]:
    first, second = start_fab(state, "deploy"), start_fab(state, "deploy")
    return finish(first), finish(second)


def check_one_waited(state, runs: tuple[FabRun, FabRun]) -> FabRun:
    """Both ended well, exactly one waited for the other and said so; returns the one that waited."""
    name = state["name"]
    for run in runs:
        assert run.returncode == 0, run.output
        assert run.recap()[name]["failed"] == 0
    waited = [run for run in runs if WAITS.search(run.output)]
    assert len(waited) == 1, [r.output for r in runs]
    # the one that waited probed after the other was done: it had nothing left to do
    assert waited[0].recap()[name]["changed"] == 0, waited[0].output
    return waited[0]


@pytest.mark.parametrize("suite", ["trixie"])
def test_two_deploys_started_together_on_a_fresh_host_run_one_after_the_other(trixie, suite):
    runs = two_deploys_at_once(trixie)
    check_one_waited(trixie, runs)
    other = next(run for run in runs if not WAITS.search(run.output))
    assert other.recap()[trixie["name"]]["changed"] > 0
    for run in runs:     # what they used to trip over
        assert "already exists" not in run.output and "cannot stat" not in run.output
    assert sh(trixie, "getent group arches | cut -d: -f1") == "arches"
    assert sh(trixie, "find /etc /opt/arches -name '.*.fabcelery-new*'") == ""   # no staging file left
    assert lock_free(trixie)
    third = trixie["project"].fab("-H", trixie["name"], "deploy")
    assert third.returncode == 0 and third.recap()[trixie["name"]]["changed"] == 0, third.output
    assert not WAITS.search(third.output)


@pytest.mark.parametrize("suite", ["trixie"])
def test_two_deploys_started_together_on_a_deployed_host_run_one_after_the_other(trixie, suite):
    project = trixie["project"]
    project.data["celery"]["concurrency"] = 3         # something to do: the worker restarts
    project.write()
    runs = two_deploys_at_once(trixie)
    check_one_waited(trixie, runs)
    assert sorted(run.recap()[trixie["name"]]["changed"] > 0 for run in runs) == [False, True]
    third = project.fab("-H", trixie["name"], "deploy")
    assert third.returncode == 0 and third.recap()[trixie["name"]]["changed"] == 0, third.output


@pytest.mark.parametrize("suite", ["trixie"])
def test_a_day_two_task_that_changes_the_host_waits_for_a_deploy_and_status_does_not(trixie, suite):
    # a deploy that restarts the worker holds the lock for seconds
    trixie["project"].data["celery"]["concurrency"] = 2
    trixie["project"].write()
    deploy = start_fab(trixie, "deploy")
    assert wait_for(lambda: not lock_free(trixie), timeout=60, interval=0.1)
    status = trixie["project"].fab("-H", trixie["name"], "status")
    restart = start_fab(trixie, "restart-celery")
    deployed, restarted = finish(deploy), finish(restart)
    assert "waiting for" not in status.output             # a reading task takes no lock
    assert deployed.returncode == 0, deployed.output
    assert restarted.returncode == 0, restarted.output
    assert re.search(r"lock         waiting for another fabcelery run on this host to finish: fab deploy from \S+ "
                     r"\(pid \d+ on the host\)", restarted.output), restarted.output
    assert re.search(r"restart      restarted celery pid \d+ -> \d+", restarted.output)


@pytest.mark.parametrize("suite", ["trixie"])
def test_a_run_that_waits_longer_than_bounds_lock_fails_with_the_holders_sentence_and_changes_nothing(
        trixie, suite, tmp_path):
    project = trixie["project"]
    project.data["celery"]["concurrency"] = 3        # the worker restarts: the deploy holds the lock for seconds
    project.write()
    impatient = tmp_path / "inventory.yaml"
    impatient.write_text(project.inventory_path.read_text() + "bounds: {lock: 2}\n")
    deploy = start_fab(trixie, "deploy")
    assert wait_for(lambda: not lock_free(trixie), timeout=60, interval=0.1)
    refused = project.fab("-H", trixie["name"], "restart-celery", env={"FABCELERY_INVENTORY": str(impatient)})
    assert finish(deploy).returncode == 0
    assert refused.returncode == 1, refused.output
    assert re.search(r"^lock13  restart      failed: another fabcelery run on this host did not finish within 2 s "
                     r"\(bounds\.lock\): fab deploy from \S+ \(pid \d+ on the host\), since .* UTC \(\d+ s ago\)\. "
                     r"Nothing was changed here; run again once it is done \(\d+\.\ds\)$", refused.output, re.M), \
        refused.output
    assert "restarted" not in refused.output


def kill_session_when(state, process: str, proc: subprocess.Popen) -> None:
    """Kill sshd's process of the deploy's SSH session as soon as `process` runs on the host."""
    seen = wait_for(lambda: sh(state, f"pgrep -x {process}", check=False) or proc.poll() is not None,
                    timeout=600, interval=0.1)
    assert seen and proc.poll() is None, f"{process} was never seen running"
    sh(state, KILL_SESSION)


def check_lost(state, run: FabRun, step: str, action: str) -> None:
    assert run.returncode == 1, run.output
    line = re.search(rf"^{state['name']}  {step:<12} failed: (.*)$", run.output, re.M)
    assert line, run.output
    assert re.fullmatch(rf"{action}: {re.escape(LOST)}; the next deploy completes the work", line[1]), line[1]
    assert "exit status -1" not in run.output


@pytest.mark.parametrize("suite", ["bookworm"])
def test_a_connection_lost_during_apt_says_so_frees_the_lock_and_the_next_deploy_heals(bookworm, suite):
    proc = start_fab(bookworm, "deploy")
    kill_session_when(bookworm, "apt-get", proc)
    lost = finish(proc, timeout=120)
    check_lost(bookworm, lost, "system", re.escape("install python3, python3-venv, logrotate, redis-server"))
    # the lock is free at once (its holder ended with the connection), not after a bound
    assert wait_for(lambda: lock_free(bookworm), timeout=3, interval=0.1), sh(bookworm, f"cat {LOCK}")
    healed = bookworm["project"].fab("-H", bookworm["name"], "deploy")
    assert healed.returncode == 0 and healed.recap()[bookworm["name"]]["failed"] == 0, healed.output
    assert "waiting for another fabcelery run" not in healed.output
    again = bookworm["project"].fab("-H", bookworm["name"], "deploy")
    assert again.recap()[bookworm["name"]] == {"ok": 7, "changed": 0, "failed": 0}, again.output


@pytest.mark.parametrize("suite", ["bookworm"])
def test_a_connection_lost_during_pip_says_so_and_the_next_deploy_waits_for_that_pip_then_heals(bookworm, suite):
    sh(bookworm, "rm -rf /opt/arches/venv")          # pip has all of its work to do again
    proc = start_fab(bookworm, "deploy")
    kill_session_when(bookworm, "pip", proc)
    lost = finish(proc, timeout=120)
    check_lost(bookworm, lost, "python", r"pip install .*")
    assert wait_for(lambda: lock_free(bookworm), timeout=3, interval=0.1)
    # the pip the lost run started goes on on the host (within its bound) ...
    assert sh(bookworm, "pgrep -x pip", check=False), "pip ended with the connection"
    healed = bookworm["project"].fab("-H", bookworm["name"], "deploy")
    assert healed.returncode == 0 and healed.recap()[bookworm["name"]]["failed"] == 0, healed.output
    # ... and the next deploy waited for it rather than run a second pip beside it
    assert re.search(r"lock         waiting for a command to finish: pip install .* \(pid \d+ on the host\), left "
                         r"running by an earlier fabcelery run", healed.output), healed.output
    again = bookworm["project"].fab("-H", bookworm["name"], "deploy")
    assert again.recap()[bookworm["name"]] == {"ok": 7, "changed": 0, "failed": 0}, again.output
    assert sh(bookworm, "ls -A /run/fabcelery/demo_proj.running") == ""
