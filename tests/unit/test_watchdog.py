"""The watchdog (celery.watchdog): the inventory key, what the check decides (tables: the
histories in, the programs to restart out), and what a deploy and an undeploy plan for it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from tasks.deploy import plan_deploy, probe_spec
from tasks.inventory import InventoryError
from tasks.layout import Layout
from tasks.probe import PathState
from tasks.runner import parse_sections
from tasks.scripts import stall_rule as r
from tasks.scripts import text
from tasks.scripts import watchdog as w
from tasks.status import (
    HostStatus,
    ProgramRow,
    status_document,
    status_table,
    watchdog_restarts,
    with_watchdog_restarts,
)
from tasks.undeploy import plan_undeploy
from tasks.watchdog import Paths, check_config

from .conftest import PASSWORD, deployed_facts, make_inventory, probe_output, target_of

POOLS = {"celery": ["celery"], "exports": ["exports", "bulk"]}
AFTER = 30


def status(**pids: int | None) -> str:
    return "".join(f"{name:<20} RUNNING   pid {pid}, uptime 0:01:00\n" if pid else f"{name:<20} STOPPED   Dec 05\n"
                   for name, pid in pids.items())


def run(observations, stalled_after=AFTER, pools=POOLS, restarts=None):
    """The state after the observations, and what the last one decides. Each observation:
    (now, {program: (pid, proc state)}, [(queue, waiting, held, head)])."""
    state: dict = {"restarts": restarts or {}}
    for now, programs, queues in observations:
        text = status(**{name: pid for name, (pid, _) in programs.items()})
        procs = {pid: proc for pid, proc in programs.values() if pid}
        samples = [r.QueueSample(*q) for q in queues]
        state = w.observe(state, text, procs, samples, now)
    return state, w.decide(state, pools, observations[-1][0], stalled_after)


RUNNING = {"celery": (11, "S"), "exports": (22, "S")}
FROZEN = {"celery": (11, "S"), "exports": (22, "T")}


@pytest.mark.parametrize("observations, restarted", [
    # nothing waits: nothing to do, frozen or not
    ([(0, FROZEN, [("exports", 0, 0, None)]), (40, FROZEN, [("exports", 0, 0, None)])], []),
    # frozen, messages waiting, for stalled_after: restarted
    ([(0, FROZEN, [("exports", 3, 0, "m1")]), (30, FROZEN, [("exports", 3, 0, "m1")])], ["exports"]),
    # frozen for less than stalled_after: not yet
    ([(0, FROZEN, [("exports", 3, 0, "m1")]), (29, FROZEN, [("exports", 3, 0, "m1")])], []),
    # free slots while the same oldest message waited, for stalled_after: restarted
    ([(0, RUNNING, [("celery", 2, 0, "m1")]), (31, RUNNING, [("celery", 2, 0, "m1")])], ["celery"]),
    # busy: every slot taken by long tasks (messages held), a backlog waiting: never
    ([(0, RUNNING, [("celery", 2, 1, "m1")]), (31, RUNNING, [("celery", 2, 1, "m1")]),
      (300, RUNNING, [("celery", 2, 1, "m1")])], []),
    # working down a backlog: the oldest message changes: never
    ([(0, RUNNING, [("celery", 9, 0, "m1")]), (20, RUNNING, [("celery", 8, 0, "m2")]),
      (40, RUNNING, [("celery", 7, 0, "m3")])], []),
    # the pool's program stopped (by hand): left to supervisor and the user
    ([(0, {"celery": (None, None)}, [("celery", 5, 0, "m1")]),
      (60, {"celery": (None, None)}, [("celery", 5, 0, "m1")])], []),
    # the broker held messages of the pool's other queue: its slots are taken, no stall
    ([(0, RUNNING, [("exports", 3, 1, "m1"), ("bulk", 0, 1, None)]),
      (40, RUNNING, [("exports", 3, 1, "m1"), ("bulk", 0, 1, None)])], []),
    # RabbitMQ (held unknown, no head): only the frozen part of the rule
    ([(0, RUNNING, [("exports", 3, None, None)]), (40, RUNNING, [("exports", 3, None, None)])], []),
    ([(0, FROZEN, [("exports", 3, None, None)]), (40, FROZEN, [("exports", 3, None, None)])], ["exports"]),
    # free slots for stalled_after, but the worker was restarted 10 s ago (still starting): not yet
    ([(0, RUNNING, [("celery", 2, 0, "m1")]), (21, {**RUNNING, "celery": (12, "S")}, [("celery", 2, 0, "m1")]),
      (31, {**RUNNING, "celery": (12, "S")}, [("celery", 2, 0, "m1")])], []),
    # ... and once it has run for stalled_after with no progress: restarted
    ([(0, RUNNING, [("celery", 2, 0, "m1")]), (21, {**RUNNING, "celery": (12, "S")}, [("celery", 2, 0, "m1")]),
      (51, {**RUNNING, "celery": (12, "S")}, [("celery", 2, 0, "m1")])], ["celery"]),
    # a new pid (supervisor restarted it): its frozen time starts again
    ([(0, FROZEN, [("exports", 3, None, None)]), (30, {**FROZEN, "exports": (23, "T")}, [("exports", 3, None, None)])],
     []),
])
def test_what_the_check_restarts(observations, restarted):
    _, restarts = run(observations)
    assert [x.program for x in restarts] == restarted


def test_a_frozen_program_is_continued_before_its_warm_restart_and_the_reason_names_the_queue():
    _, restarts = run([(0, FROZEN, [("exports", 3, 0, "m1")]), (30, FROZEN, [("exports", 3, 0, "m1")])])
    assert restarts[0].frozen and restarts[0].pool == "exports"
    assert restarts[0].reason.startswith("exports: messages wait and the main process of exports")


@pytest.mark.parametrize("last, restarted", [
    (None, ["exports"]),
    (20, []),            # restarted 20 s before: at most once per stalled_after
    (10, ["exports"]),   # 30 s before: again
])
def test_at_most_one_restart_per_stalled_after_per_program(last, restarted):
    restarts = {"exports": {"at": last}} if last is not None else {}
    _, found = run([(0, FROZEN, [("exports", 3, 0, "m1")]), (40, FROZEN, [("exports", 3, 0, "m1")])],
                   restarts=restarts)
    assert [x.program for x in found] == restarted


def test_a_pool_group_of_several_processes_is_matched_by_its_pool():
    assert w.pool_of("exports:exports_00", POOLS) == "exports"
    assert w.pool_of("celerybeat", POOLS) is None


def test_the_record_keeps_the_last_restart():
    restart = w.Restart("exports", "exports", "exports: frozen", True)
    state = w.record({"restarts": {"celery": {"at": 1}}}, restart, 22, 100.0, "exports: stopped; exports: started")
    assert state["restarts"] == {"celery": {"at": 1}, "exports": {"at": 100.0, "reason": "exports: frozen", "pid": 22,
                                                                  "result": "exports: stopped; exports: started"}}


def test_the_broker_url_is_read_from_the_block_and_nothing_runs():
    text = ("import os\nX = os.system('false')\n# BEGIN fabcelery managed block\nCELERY_BROKER_URL = 'redis://u:p@h/0'\n"
            "CELERY_BROKER_TRANSPORT_OPTIONS = {'global_keyprefix': 'p:'}\nY = f()\n# END fabcelery managed block\n")
    found = w.block_settings(text, "# BEGIN fabcelery managed block", "# END fabcelery managed block")
    assert found == {"CELERY_BROKER_URL": "redis://u:p@h/0",
                     "CELERY_BROKER_TRANSPORT_OPTIONS": {"global_keyprefix": "p:"}}


def test_the_script_runs_as_a_file_beside_stall_rule_py(tmp_path):
    """As the service runs it: isolated (-I), its directory not on the path, the rule loaded beside it."""
    for name in ("watchdog.py", "stall_rule.py"):
        (tmp_path / name).write_text(text(name))
    done = subprocess.run([sys.executable, "-I", str(tmp_path / "watchdog.py")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("usage: watchdog.py CONFIG.json")


# --- the inventory key ------------------------------------------------------------------------


def test_the_watchdog_is_off_unless_the_key_is_there():
    assert make_inventory().celery.watchdog is None
    on = make_inventory(celery__watchdog={"stalled_after": 300})
    assert (on.celery.watchdog.stalled_after, on.celery.watchdog.interval) == (300, 60)
    assert make_inventory(celery__watchdog={"stalled_after": 20}).celery.watchdog.interval == 5


@pytest.mark.parametrize("value, message", [
    ({"stalled_after": 5}, "'celery.watchdog.stalled_after' must be from 20 to 86400; got 5"),
    ({"stalled_after": "5m"}, "'celery.watchdog.stalled_after' must be a whole number"),
    ({"stalled_after": 60, "interval": 2}, "'celery.watchdog.interval' must be from 5 to 86400; got 2"),
    ({"stalled_after": 60, "interval": 90}, "'celery.watchdog.interval' is 90 s, longer than "
                                            "celery.watchdog.stalled_after (60 s)"),
    ({"stalled": 60}, "'celery.watchdog.stalled' is not a known key (known: stalled_after, interval)"),
    (300, "'celery.watchdog' must be a mapping like {stalled_after: 300}"),
])
def test_a_wrong_watchdog_key_is_refused_naming_it(value, message):
    with pytest.raises(InventoryError) as refused:
        make_inventory(celery__watchdog=value)
    text = str(refused.value)
    assert message in text and text.endswith("nothing was changed.") and "\n" not in text


# --- deploy, status, undeploy -----------------------------------------------------------------


def watched():
    return make_inventory(celery__watchdog={"stalled_after": 60, "interval": 10},
                          celery__pools={"celery": {}, "exports": {"queues": ["exports", "bulk"]}})


def with_watchdog_files(inventory, facts):
    """A host the watchdog was deployed on: its files there, the timer enabled and active."""
    paths = Paths(Layout(inventory.project))
    files = {p: PathState("file", "root", "root", "644")
             for p in (paths.script, paths.rule, paths.config, paths.service, paths.timer)}
    return replace(facts, paths={**facts.paths, **files},
                   services={**facts.services, paths.timer_name: {"enabled": "enabled", "active": "active"}})


def summaries(plans):
    return [(p.name, a.summary) for p in plans for a in p.actions]


def test_a_first_deploy_installs_the_check_and_starts_its_timer_with_the_configs():
    inventory = watched()
    facts = deployed_facts(make_inventory(celery__pools={"celery": {}, "exports": {"queues": ["exports", "bulk"]}}))
    plans = plan_deploy(target_of(inventory), facts, PASSWORD)
    done = summaries(plans)
    assert ("configs", "install /var/lib/fabcelery/my_proj/watchdog.py") in done
    assert ("configs", "install /etc/systemd/system/my_proj-watchdog.timer") in done
    assert ("configs", "start my_proj-watchdog.timer anew") in done
    # nothing of the programs restarts for it
    assert not [s for name, s in done if name == "supervisord"]
    uploads = {u.target: u for p in plans for a in p.actions for u in a.uploads}
    service = uploads["/etc/systemd/system/my_proj-watchdog.service"].content
    assert "User=arches\n" in service and "Type=oneshot" in service
    assert ("ExecStart=/opt/arches/venv/bin/python -I /var/lib/fabcelery/my_proj/watchdog.py "
            "/var/lib/fabcelery/my_proj/watchdog.json") in service
    timer = uploads["/etc/systemd/system/my_proj-watchdog.timer"].content
    assert "OnUnitActiveSec=10\n" in timer
    config = json.loads(uploads["/var/lib/fabcelery/my_proj/watchdog.json"].content)
    assert config == check_config(target_of(inventory))
    assert "s3cret" not in json.dumps(config) and config["keys"] == {
        "celery": "my_proj:celery", "exports": "my_proj:exports", "bulk": "my_proj:bulk"}
    assert config["pools"] == {"celery": ["celery"], "exports": ["exports", "bulk"]}


def test_a_second_deploy_with_the_watchdog_on_plans_nothing():
    inventory = watched()
    facts = with_watchdog_files(inventory, deployed_facts(inventory))
    assert summaries(plan_deploy(target_of(inventory), facts, PASSWORD)) == []


def test_a_stopped_timer_is_started_again():
    inventory = watched()
    facts = with_watchdog_files(inventory, deployed_facts(inventory))
    facts = replace(facts, services={**facts.services, "my_proj-watchdog.timer": {"enabled": "enabled",
                                                                                   "active": "inactive"}})
    done = summaries(plan_deploy(target_of(inventory), facts, PASSWORD))
    assert [x for x in done if x[0] != "verify"] == [("configs", "enable and start my_proj-watchdog.timer")]


def test_the_key_turned_off_removes_the_timer_and_its_files_on_the_next_deploy():
    on = watched()
    off = make_inventory(celery__pools={"celery": {}, "exports": {"queues": ["exports", "bulk"]}})
    facts = with_watchdog_files(on, deployed_facts(on))
    plans = plan_deploy(target_of(off), facts, PASSWORD)
    assert [x for x in summaries(plans) if x[0] != "verify"] == [
        ("configs", "remove /etc/systemd/system/my_proj-watchdog.service"),
        ("configs", "stop and remove my_proj-watchdog.timer"),
        ("configs", "remove /var/lib/fabcelery/my_proj/watchdog.json"),
        ("configs", "remove /var/lib/fabcelery/my_proj/watchdog.py"),
        ("configs", "remove /var/lib/fabcelery/my_proj/stall_rule.py"),
    ]
    timer = next(a for p in plans for a in p.actions if a.summary.startswith("stop and remove"))
    assert "systemctl disable --now --quiet my_proj-watchdog.timer" in timer.script


def test_the_watchdog_needs_systemd():
    inventory = watched()
    facts = replace(deployed_facts(inventory), systemd=False)
    configs = next(p for p in plan_deploy(target_of(inventory), facts, PASSWORD)
                   if p.name == "configs")
    assert "celery.watchdog runs from a systemd timer (my_proj-watchdog.timer)" in configs.error


def test_the_probe_asks_for_the_watchdog_files_whether_it_is_on_or_off():
    for inventory in (watched(), make_inventory()):
        spec = probe_spec(target_of(inventory))
        assert "/etc/systemd/system/my_proj-watchdog.timer" in spec.checksums
        assert "my_proj-watchdog.timer" in spec.services


def test_undeploy_stops_the_timer_first():
    inventory = watched()
    facts = with_watchdog_files(inventory, deployed_facts(inventory))
    done = summaries(plan_undeploy(target_of(inventory), facts))
    assert done[:2] == [("supervisord", "remove /etc/systemd/system/my_proj-watchdog.service"),
                        ("supervisord", "stop and remove my_proj-watchdog.timer")]


def test_status_shows_a_programs_last_watchdog_restart():
    state = {"restarts": {"exports": {"at": 1764921600.0, "reason": "exports: messages wait", "pid": 22}}}
    sections = parse_sections(probe_output(watchdog=json.dumps(state)))
    restarts = watchdog_restarts(sections)
    status = with_watchdog_restarts(HostStatus("prod", programs=(ProgramRow("celery", "RUNNING", 11),
                                                                 ProgramRow("exports", "RUNNING", 23))), restarts)
    table = status_table([status])
    assert "last watchdog restart 2025-12-05 08:00:00 UTC (exports: messages wait)" in table.splitlines()[2]
    assert "watchdog" not in table.splitlines()[1]
    document = status_document([status])
    exports = document["hosts"][0]["programs"][1]
    assert exports["watchdog_restart"]["at"] == "2025-12-05 08:00:00 UTC"
    assert "watchdog_restart" not in document["hosts"][0]["programs"][0]


def test_status_without_the_watchdogs_state_shows_nothing_of_it():
    assert watchdog_restarts(parse_sections(probe_output())) == {}
    assert watchdog_restarts(parse_sections(probe_output(watchdog="not json"))) == {}
