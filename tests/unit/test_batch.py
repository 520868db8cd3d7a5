"""Quick actions of a step run as one remote command; a failure still names its action."""

import subprocess

import pytest

from tasks.apply import action_groups, run_batch
from tasks.host_errors import RemoteCommandError
from tasks.plan import Action, Upload
from tasks.shell import batch, batch_failure


def run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True)


def test_batch_runs_in_order_and_stops_at_the_first_failure():
    done = run(batch(["echo one", "exit 0", "echo two; echo oops >&2; exit 3", "echo never"]))
    assert done.returncode == 3
    assert done.stdout.split() == ["one", "two"]          # `exit 0` ended only its own script
    index, stderr = batch_failure(done.stderr)
    assert (index, stderr.strip()) == (2, "oops")


def test_batch_that_succeeds_leaves_no_mark():
    done = run(batch(["true", "echo ok"]))
    assert done.returncode == 0 and batch_failure(done.stderr) == (None, "")


def test_only_consecutive_quick_script_actions_are_grouped():
    quick = [Action(f"q{i}", "true", quick=True) for i in range(4)]
    slow = Action("apt", "apt-get install x")
    upload = Action("files", uploads=(Upload("/etc/x", "x"),), quick=True)
    groups = action_groups((slow, quick[0], quick[1], upload, quick[2], slow, quick[3]))
    assert [[a.summary for a in g] for g in groups] == [["apt"], ["q0", "q1"], ["files"], ["q2"], ["apt"], ["q3"]]


class FakeRemote:
    """Runs the batch in a local sh, as run_root would over SSH (check=False)."""

    def run_root(self, script, summary, check=True, **_bounds):
        assert check is False
        done = run(script)
        return type("Result", (), {"exited": done.returncode, "stdout": done.stdout, "stderr": done.stderr})

    def mask(self, text):
        return text


def test_a_failed_batch_is_reported_with_the_failing_actions_summary():
    actions = [Action("create /a", "true", quick=True),
               Action("create user x", "echo 'useradd: group y does not exist' >&2; exit 6", quick=True),
               Action("create /b", "echo not reached", quick=True)]
    with pytest.raises(RemoteCommandError) as error:
        run_batch(FakeRemote(), actions)
    assert str(error.value) == "create user x: useradd: group y does not exist"


def test_broker_and_python_overlap_only_when_both_change_and_not_in_a_dry_run():
    from tasks.apply import stages
    from tasks.plan import change, ok

    def names(groups):
        return [[p.name for p in g] for g in groups]

    step = Action("x", "true")
    plans = [change("system", step), change("broker", step), change("python", step), change("configs", step)]
    assert names(stages(plans)) == [["system"], ["broker", "python"], ["configs"]]
    assert names(stages(plans, dry_run=True)) == [["system"], ["broker"], ["python"], ["configs"]]
    quiet = [change("system", step), ok("broker", "fine"), change("python", step), ok("configs", "fine")]
    assert names(stages(quiet)) == [["system"], ["broker"], ["python"], ["configs"]]
