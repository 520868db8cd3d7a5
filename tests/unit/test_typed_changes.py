"""Follow-ups react to what an action does (its Effect), never to the wording of its summary."""

from __future__ import annotations

from dataclasses import replace

from tasks.plan import EVENT, Action, Event, change, events_in
from tasks.probe import Facts
from tasks.resources_python import PipInstall

from .conftest import make_inventory, target_of


def test_pip_reports_a_changed_virtualenv_only_where_it_is_told_to_record_it():
    pip = PipInstall("/srv/venv", "arches", "/home/arches", ("celery==5.6.0",), "stamp", "/var/lib/x/stamp")
    facts = Facts(venv_python="/srv/venv/bin/python")
    plain, = pip.diff(facts).actions
    assert EVENT not in plain.script and "cksum" not in plain.script
    watched, = replace(pip, changes_record="/var/lib/x/pending-apply").diff(facts).actions
    assert plain.script in watched.script and EVENT + Event.VENV_CHANGED in watched.script
    assert "virtualenv >> /var/lib/x/pending-apply" in watched.script


def test_events_are_read_from_their_own_lines_only():
    output = f"Collecting x\n{EVENT}{Event.VENV_CHANGED}\n{EVENT}no_such_event\npip said {EVENT}venv_changed\n"
    assert events_in(output) == {Event.VENV_CHANGED}
    assert events_in("Successfully installed x\n") == set()


def test_a_step_cut_by_ctrl_c_is_recorded_as_a_typed_cut_and_reported_with_its_counts():
    import os
    from types import SimpleNamespace

    from tasks import interrupt
    from tasks.apply import interrupted, run_step
    from tasks.plan import StepName
    from tasks.report import Cut, HostResult, Reporter

    class StopsAfterFirst:
        def run_root(self, script, summary, **kwargs):
            interrupt.STOP.set()        # Ctrl-C while the first action runs
            return SimpleNamespace(stdout="", stderr="", exited=0)

    inventory = make_inventory()
    result = HostResult(host="prod")
    plan = change(StepName.SUPERVISORD, Action("a", "true"), Action("b", "true"), Action("c", "true"))
    interrupt.STOP.clear()
    try:
        done = run_step(plan, StopsAfterFirst(), target_of(inventory), Reporter(stream=open(os.devnull, "w")),
                        result, False, set())
    finally:
        interrupt.STOP.clear()
    assert not done and result.interrupted and result.cut == [Cut(StepName.SUPERVISORD, 1, 3)]
    lines = []
    interrupted(result, lambda step, text: lines.append(text), ["probe"], ["verify"], [str(c) for c in result.cut])
    assert lines == ["interrupted (Ctrl-C): done: probe; stopped part-way: supervisord (1 of 3 actions done); "
                     "not started: verify. The next deploy completes the work"]
