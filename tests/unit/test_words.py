"""What the output says, where it used to mislead (issue 23): each text against what it
stands for."""

from __future__ import annotations

import io
import re

import pytest

from tasks.apply import file_diff
from tasks.probe import Facts
from tasks.report import HostResult, Reporter
from tasks.status import stopped_when
from tests.unit.test_resources import PIP


@pytest.mark.parametrize("state,description,said", [
    ("STOPPED", "Dec 04 02:32 PM", "stopped at 14:32 (Dec 04)"),
    ("STOPPED", "Jan 01 12:05 AM", "stopped at 00:05 (Jan 01)"),
    ("EXITED", "Feb 29 11:59 AM", "exited at 11:59 (Feb 29)"),
    ("STOPPED", "Not started", "Not started"),
    ("FATAL", "Exited too quickly (process log may have details)", "Exited too quickly (process log may have details)"),
])
def test_a_stopped_programs_detail_says_when_it_stopped(state, description, said):
    assert stopped_when(state, description) == said


def test_an_undeploy_dry_runs_diff_is_headed_after_undeploy():
    assert file_diff("/etc/x.conf", "a\nb\n", "a\n", secret=False, after="undeploy").splitlines()[:2] == [
        "--- /etc/x.conf (on the host)", "+++ /etc/x.conf (after undeploy)"]
    assert file_diff("/etc/x.conf", "a\n", "b\n", secret=False).splitlines()[1] == "+++ /etc/x.conf (after deploy)"


def test_the_python_steps_noop_says_the_requirements_are_unchanged():
    facts = Facts(venv_python=True, contents={"/s": "stamp", "/p/req.txt": "x"}, dists={"celery": "5.6.3"})
    assert PIP.diff(facts).noop == "requirements unchanged since the last install"


def test_the_status_recap_says_what_it_counts():
    out = io.StringIO()
    reporter = Reporter(stream=out)
    reporter.recap([HostResult(host="prod", ok=3)], counting="counting programs")
    assert out.getvalue().splitlines()[1:] == ["RECAP (counting programs)", "prod  ok=3 changed=0 failed=0"]
    from tasks.cli import STATUS_COUNTS
    assert STATUS_COUNTS == ("counting programs and the broker: ok = RUNNING or UP, failed = any other state, and "
                             "each queue NOT CONSUMED (on the broker host)")     # as the README shows it



def _step_lines(plan, dry_run=False):
    from tasks.apply import run_step
    from tests.unit.conftest import make_inventory, target_of
    from tests.unit.test_bounds import RecordingRemote

    inventory = make_inventory()
    out, result, remote = io.StringIO(), HostResult(host="prod"), RecordingRemote()
    assert run_step(plan, remote, target_of(inventory), Reporter(stream=out), result, dry_run, set())
    return out.getvalue().splitlines(), result, remote


def test_verify_that_found_all_well_is_ok_and_counts_no_change(no_interrupt):
    from tasks.plan import Action, change

    verify = change("verify", Action("wait for celery to run and the worker to answer ping", "true"),
                    looks_only=True, noop="celery RUNNING and the worker answers ping")
    lines, result, remote = _step_lines(verify)
    assert remote.ran == ["wait for celery to run and the worker to answer ping"]      # it did look
    assert re.fullmatch(r"prod +verify +ok \(celery RUNNING and the worker answers ping, [\d.]+s\)", lines[-1])
    assert (result.ok, result.changed) == (1, 0)
    _, dry, _ = _step_lines(verify, dry_run=True)
    assert (dry.ok, dry.changed) == (1, 0)
    # a step that changes something still counts
    _, changed, _ = _step_lines(change("configs", Action("install x", "true")))
    assert (changed.ok, changed.changed) == (1, 1)


@pytest.fixture
def no_interrupt():
    from tasks import interrupt

    interrupt.STOP.clear()
    yield interrupt.STOP
    interrupt.STOP.clear()
