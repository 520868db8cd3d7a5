"""The deploy's follow-ups run on the typed changes of the steps before them (tasks/follow_ups.py):
which change each reacts to, read from the plans and the facts, never from an action's words."""

from __future__ import annotations

import pytest

from tasks import follow_ups
from tasks.follow_ups import Change, Planned, changes_of, follow_up
from tasks.plan import Action, ConfigChanges, StepName, StepPlan, change, ok

from .conftest import deployed_facts, make_inventory, target_of

CELERYD = "/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf"


def planned(facts=None, **steps: StepPlan) -> Planned:
    inventory = make_inventory()
    plans = {name: ok(name, "as it should be") for name in
             (StepName.SYSTEM, StepName.BROKER, StepName.PYTHON, StepName.CONFIGS, StepName.SUPERVISORD)}
    plans.update({StepName(name): plan for name, plan in steps.items()})
    return Planned(target_of(inventory), facts or deployed_facts(inventory), plans, "/home/arches", {})


def pending(text: str):
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    facts.contents[target_of(inventory).layout.pending_apply] = text
    return facts


@pytest.mark.parametrize("steps, facts, expected", [
    ({}, None, set()),
    ({"configs": ok(StepName.CONFIGS, "", configs=ConfigChanges(changed=(CELERYD,)))}, None, {Change.CONFIGS}),
    ({"python": change(StepName.PYTHON, Action("pip install x", "true"))}, None, {Change.PIP}),
    ({}, pending("virtualenv\n"), {Change.VENV_EARLIER}),
    ({}, pending(f"{CELERYD}\n"), set()),          # a config file's line is the configs step's, not the virtualenv's
    ({"supervisord": ok(StepName.SUPERVISORD, "", venv_restart=True)}, None, {Change.VENV_RESTART}),
    ({"broker": ok(StepName.BROKER, "", restarts_redis=True)}, None, {Change.REDIS_RESTART}),
    # a summary that reads like a change is not one
    ({"broker": change(StepName.BROKER, Action("restart redis-server", "true"))}, None, set()),
])
def test_changes_are_read_from_the_typed_plans_and_the_facts(steps, facts, expected):
    assert changes_of(planned(facts, **steps)) == expected


def test_a_follow_up_runs_only_when_one_of_its_changes_is_there(monkeypatch):
    ran = []

    def record(now: Planned) -> StepPlan:
        ran.append(changes_of(now))
        return now.steps[StepName.SUPERVISORD]

    pip = planned(python=change(StepName.PYTHON, Action("pip install x", "true")))
    redis = planned(broker=ok(StepName.BROKER, "", restarts_redis=True))
    monkeypatch.setattr(follow_ups, "FOLLOW_UPS",
                        (follow_ups.FollowUp(StepName.SUPERVISORD, frozenset({Change.REDIS_RESTART}), record),))
    follow_up(pip)
    assert ran == []
    follow_up(redis)
    assert ran == [{Change.REDIS_RESTART}]


def test_one_follow_up_reacts_to_what_an_earlier_one_did(monkeypatch):
    # an earlier deploy changed the virtualenv: the restart of the programs is planned (VENV_RESTART),
    # and the pending record is forgotten once it succeeded
    earlier, quiet = planned(pending("virtualenv\n")), planned()
    monkeypatch.setattr(follow_ups, "FOLLOW_UPS", follow_ups.FOLLOW_UPS[:3])   # not the app's check: no context here
    supervisord = follow_up(earlier)[StepName.SUPERVISORD]
    assert supervisord.venv_restart and [a.when for a in supervisord.actions] == [None]
    assert supervisord.after_success == "rm -f /var/lib/fabcelery/my_proj/pending-apply"
    # nothing changed: no follow-up adds anything
    assert follow_up(quiet) == quiet.steps


def test_the_restart_after_redis_is_left_out_when_supervisord_starts_anyway():
    from tasks.plan import Effect

    facts = deployed_facts(make_inventory())
    facts.dists["kombu"] = "5.3.7"
    redis = ok(StepName.BROKER, "", restarts_redis=True)
    restarted = follow_up(planned(facts, broker=redis))[StepName.SUPERVISORD]
    assert [a.summary for a in restarted.actions] == [
        "restart celery, celerybeat (Redis restarted; kombu 5.3.7 may not resume consuming: kombu#2007)"]
    # told by its effect, whatever its summary says
    starts = change(StepName.SUPERVISORD, Action("bring it up", "true", effect=Effect.SUPERVISORD_STARTS))
    assert follow_up(planned(facts, broker=redis, supervisord=starts))[StepName.SUPERVISORD] == starts
    facts.dists["kombu"] = "5.4.0"
    assert not follow_up(planned(facts, broker=redis))[StepName.SUPERVISORD].actions
