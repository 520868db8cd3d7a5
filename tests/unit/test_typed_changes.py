"""Follow-ups react to what an action does (its Effect), never to the wording of its summary."""

from __future__ import annotations

from tasks.deploy import watch_virtualenv
from tasks.plan import EVENT, Action, Effect, Event, change, events_in

from .conftest import make_inventory


def test_the_pip_action_is_watched_by_its_effect_whatever_its_summary_says():
    inventory = make_inventory()
    python = change("python", Action("bring the requirements up to date", "pip-run", effect=Effect.PIP_INSTALL),
                    Action("pip install (a summary alone)", "other"))
    watched, other = watch_virtualenv(inventory, python).actions
    assert "pip-run" in watched.script and EVENT + Event.VENV_CHANGED in watched.script
    assert other.script == "other"


def test_events_are_read_from_their_own_lines_only():
    output = f"Collecting x\n{EVENT}{Event.VENV_CHANGED}\n{EVENT}no_such_event\npip said {EVENT}venv_changed\n"
    assert events_in(output) == {Event.VENV_CHANGED}
    assert events_in("Successfully installed x\n") == set()
