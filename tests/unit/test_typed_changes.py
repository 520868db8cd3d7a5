"""Follow-ups react to what an action does (its Effect), never to the wording of its summary."""

from __future__ import annotations

from tasks.deploy import watch_virtualenv
from tasks.plan import EVENT, Action, Effect, Event, change, events_in

from .conftest import make_inventory, target_of


def test_the_pip_action_is_watched_by_its_effect_whatever_its_summary_says():
    inventory = make_inventory()
    python = change("python", Action("bring the requirements up to date", "pip-run", effect=Effect.PIP_INSTALL),
                    Action("pip install (a summary alone)", "other"))
    watched, other = watch_virtualenv(target_of(inventory), python).actions
    assert "pip-run" in watched.script and EVENT + Event.VENV_CHANGED in watched.script
    assert other.script == "other"


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
