"""A restart loses no task it could keep (tasks/shutdown.py): tables of the host's Celery and
the pools in, the listeners, supervisord's stopwaitsecs and systemd's TimeoutStopSec out."""

from __future__ import annotations

import configparser

import pytest

from tasks.deploy import plan_deploy
from tasks.layout import Layout
from tasks.probe import Facts
from tasks.scripts import handback
from tasks.shutdown import handbacks, listener, listener_script

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory


def pools(**specs):
    return {name: {"queues": [name], **spec} for name, spec in specs.items()}


# (the virtualenv's celery, or None: none yet (the pin, else versions.celery 5.7.0)), the pools,
# the listeners' (program, seconds), supervisord's stopwaitsecs per program
CASES = [
    ("5.7.0", None, [("celery", 600)], {"celery": 630}),
    ("5.5.0", None, [("celery", 600)], {"celery": 630}),
    ("5.6.3", pools(a={"stopwaitsecs": 8}, b={"time_limit": 3600, "stopwaitsecs": 3600}),
     [("a", 8), ("b", 3600)], {"a": 38, "b": 3630}),
    (None, None, [("celery", 600)], {"celery": 630}),                   # fresh host: versions.celery 5.7.0
    ("5.4.0", None, [], {"celery": 600}),                                # older Celery: today's behaviour
    ("5.3.6", pools(a={}, b={"pool": "prefork"}), [], {"a": 600, "b": 600}),
    # threads and solo: Celery cannot cancel their tasks (terminate_job), the warm shutdown stays
    ("5.7.0", pools(t={"pool": "threads"}, s={"pool": "solo"}, p={}), [("p", 600)], {"t": 600, "s": 600, "p": 630}),
]


def render(inventory, facts):
    plans = plan_deploy(inventory, inventory.hosts["prod"], facts, PASSWORD)
    return {u.target: u.content for p in plans for a in p.actions for u in a.uploads}


@pytest.mark.parametrize("celery, pool_specs, listeners, stopwaitsecs", CASES)
def test_listeners_and_supervisords_stopwaitsecs(celery, pool_specs, listeners, stopwaitsecs):
    inventory = make_inventory(**({"celery__pools": pool_specs} if pool_specs else {}))
    facts = fresh_facts(dists={"celery": celery} if celery else {})
    host = inventory.hosts["prod"]
    assert [(h.program, h.seconds) for h in handbacks(inventory, host, facts)] == listeners
    files = render(inventory, facts)
    layout = Layout(inventory.project)
    seen = {}
    for name in stopwaitsecs:
        config = configparser.RawConfigParser(inline_comment_prefixes=(";",))
        config.read_string(files[layout.pool_conf(name)])
        seen[name] = int(config[f"program:{name}"]["stopwaitsecs"])
        section = f"eventlistener:{listener(name)}"
        assert config.has_section(section) == (name in dict(listeners)), name
        if config.has_section(section):
            assert config[section]["command"].endswith(
                f"{listener_script(inventory)} {name}={dict(listeners)[name]}={layout.pool_log(name)}")
            assert config[section]["priority"] == "1"            # up before the worker, down after it
    assert seen == stopwaitsecs
    assert (listener_script(inventory) in files) == bool(listeners)
    # systemd waits for supervisord to stop every program, one after another
    unit = files[layout.unit_file]
    assert f"\nTimeoutStopSec={max(600, sum(stopwaitsecs.values())) + 60}\n" in unit


def test_the_projects_pin_decides_before_the_virtualenv_exists():
    inventory = make_inventory(project__requirements="requirements.txt")
    layout = Layout(inventory.project)
    facts = fresh_facts(contents={**fresh_facts().contents, layout.requirements: "celery==5.3.6\n"})
    assert handbacks(inventory, inventory.hosts["prod"], facts) == []


def test_celery_older_than_5_5_removes_the_listeners_script():
    """The project's pin goes back to 5.3.6: the script goes, and the worker's file loses its listener."""
    inventory = make_inventory()
    deployed = deployed_facts(inventory)
    older = Facts(**{**deployed.__dict__, "dists": {**deployed.dists, "celery": "5.3.6"}})
    plans = plan_deploy(inventory, inventory.hosts["prod"], older, PASSWORD)
    configs = next(p for p in plans if p.name == "configs")
    summaries = [a.summary for a in configs.actions]
    assert f"remove {listener_script(inventory)}" in summaries
    uploads = {u.target: u.content for a in configs.actions for u in a.uploads}
    assert "[eventlistener:" not in uploads[Layout(inventory.project).celeryd_conf]


def test_a_second_deploy_changes_nothing():
    inventory = make_inventory()
    plans = plan_deploy(inventory, inventory.hosts["prod"], deployed_facts(inventory), PASSWORD)
    assert [p.name for p in plans if p.changed] == []


# --- the listener (tasks/scripts/handback.py) ------------------------------------------------


def test_the_listener_reads_its_table_and_supervisors_lines():
    assert handback.parse(["celery=8=/var/log/celery/p-worker.log", "b=3600=/x"]) == {
        "celery": (8.0, "/var/log/celery/p-worker.log"), "b": (3600.0, "/x")}
    assert handback.fields("processname:celery groupname:celery from_state:RUNNING pid:2766") == {
        "processname": "celery", "groupname": "celery", "from_state": "RUNNING", "pid": "2766"}


# (events in order: name, program, pid), the timers left running
EVENTS = [
    ([("PROCESS_STATE_STOPPING", "celery", "4242")], ["celery"]),
    ([("PROCESS_STATE_STOPPING", "celery", "4242"), ("PROCESS_STATE_STOPPED", "celery", "")], []),
    ([("PROCESS_STATE_STOPPING", "celery", "4242"), ("PROCESS_STATE_EXITED", "celery", "")], []),
    ([("PROCESS_STATE_STOPPING", "celerybeat", "4243")], []),          # not a worker it ends
    ([("PROCESS_STATE_RUNNING", "celery", "4242")], []),
]


@pytest.mark.parametrize("events, timers", EVENTS)
def test_the_listener_times_a_stopping_worker_only(events, timers):
    ear = handback.Listener({"celery": (3600.0, "/dev/null")})
    for name, program, pid in events:
        ear.event({"eventname": name}, f"processname:{program} groupname:{program} from_state:RUNNING"
                                       + (f" pid:{pid}" if pid else ""))
    assert sorted(ear.timers) == timers
    for timer in ear.timers.values():
        timer.cancel()


def test_the_listener_never_signals_another_process_with_the_same_pid(monkeypatch):
    sent = []
    monkeypatch.setattr(handback.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    ear = handback.Listener({"celery": (0.0, "/dev/null")})
    monkeypatch.setattr(handback, "started", lambda pid: "200")
    ear.time_up("celery", 4242, "100", 8, "/dev/null")       # started at 100, now a process started at 200
    assert sent == []
    ear.time_up("celery", 4242, "200", 8, "/dev/null")
    assert sent == [(4242, handback.signal.SIGQUIT)]
