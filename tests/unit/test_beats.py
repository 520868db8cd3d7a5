"""Exactly one celery beat, fleet-wide (tasks/beats.py): which processes are the project's
beat, and which of them `fab status` marks EXTRA, naming both hosts."""

from __future__ import annotations

import pytest

from tasks.beats import BeatProcess, extra_beats, parse_beats, project_beats, runs_beat
from tasks.host_status import HostStatus, ProgramRow
from tasks.status import fleet_ok, status_script, with_beat_check
from tasks.target import Target

from .conftest import make_inventory

APP = "demo_proj.celery"
VENV_BEAT = ("/opt/arches/venv/bin/python3", "/opt/arches/venv/bin/celery", "-A", APP, "beat", "--loglevel=INFO")


@pytest.mark.parametrize("argv,beat", [
    (VENV_BEAT, True),                                                         # supervisord's celerybeat
    (("/opt/arches/venv/bin/celery", "-A", APP, "beat"), True),                # started by hand
    (("python3", "-m", "celery", "--app=demo_proj.celery", "beat"), True),
    (("celery", "-Ademo_proj", "beat"), True),                                 # the package: celery finds .celery
    (("celery", "-A", "demo_proj.celery:app", "beat"), True),
    (("celery", "-A", APP, "worker", "-B"), True),                             # a worker with an embedded beat
    (("celery", "-A", APP, "worker", "--beat"), True),
    (("celery", "-A", APP, "worker", "--hostname=celery@h"), False),           # a worker
    (("celery", "-A", "other_proj.celery", "beat"), False),                    # another project's beat
    (("runuser", "-u", "arches", "--", "/opt/arches/venv/bin/celery", "-A", APP, "beat"), False),  # its parent
    (("python3", "-c", "import time", "-A", APP, "beat"), False),
    (("make", "-B"), False),
    ((), False),
])
def test_which_command_lines_run_the_projects_beat(argv, beat):
    assert runs_beat(argv, APP) is beat


def test_status_beat_lines_are_read_and_a_workers_children_count_once():
    inventory = make_inventory(celery__app=APP, project__name="demo_proj")
    text = "\n".join([
        "300 1 999 " + "\x1f".join(VENV_BEAT) + "\x1f",
        "400 1 0 celery\x1f-A\x1fdemo_proj.celery\x1fworker\x1f-B\x1f",
        "401 400 0 celery\x1f-A\x1fdemo_proj.celery\x1fworker\x1f-B\x1f",       # its pool process
        "500 1 0 runuser\x1f-u\x1farches\x1f--\x1fcelery\x1f-A\x1fdemo_proj.celery\x1fbeat\x1f",
        "garbage",
    ])
    assert [p.pid for p in parse_beats(text)] == [300, 400, 401, 500]
    assert [(p.pid, p.uid) for p in project_beats(inventory, text)] == [(300, "999"), (400, "0")]
    assert parse_beats(None) == []


def beat(pid: int, uid: str = "999") -> BeatProcess:
    return BeatProcess(pid, 1, uid, VENV_BEAT)


FLEET = dict(hosts={"app1": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.5"},
                    "app2": {"roles": ["worker"]}, "app3": {"roles": ["worker"]}})


@pytest.mark.parametrize("case,beats,supervised,extra", [
    ("one beat, on the beat host", {"app1": (beat(10),), "app2": ()}, {"app1": 10}, {}),
    ("a leftover on app2 after beat moved to app1", {"app1": (beat(10),), "app2": (beat(20),)},
     {"app1": 10, "app2": 20}, {"app2": [20]}),
    ("one started by hand on app2", {"app1": (beat(10),), "app2": (beat(20, "0"),)}, {"app1": 10, "app2": None},
     {"app2": [20]}),
    ("one started by hand beside supervisord's on the beat host", {"app1": (beat(11, "0"), beat(10))},
     {"app1": 10}, {"app1": [11]}),
    ("beat only on app2: the beat host does not run it", {"app1": (), "app2": (beat(20),)}, {"app1": None},
     {"app2": [20]}),
    ("three beats", {"app1": (beat(10),), "app2": (beat(20),), "app3": (beat(30),)}, {"app1": 10},
     {"app2": [20], "app3": [30]}),
    ("`fab -H app2 status`: the beat host not asked", {"app2": (beat(20),)}, {}, {"app2": [20]}),
])
def test_every_beat_beyond_the_beat_hosts_one_is_extra(case, beats, supervised, extra):
    inventory = make_inventory(**FLEET)
    found = extra_beats(inventory, beats, supervised)
    assert {host: [p.pid for p, _ in marks] for host, marks in found.items()} == extra, case


def test_the_extra_beat_names_both_hosts_and_what_to_do():
    inventory = make_inventory(**FLEET)
    two = {"app1": (beat(10),), "app2": (beat(20),)}
    (_, leftover), = extra_beats(inventory, two, {"app1": 10, "app2": 20})["app2"]
    assert leftover == ("celery beat runs on app2 and on app1 (the inventory's beat host). Two beats send every "
                        "periodic task twice. This one is supervisord's program celerybeat, left from before beat "
                        "moved: `fab deploy` removes it")
    (_, by_hand), = extra_beats(inventory, {"app1": (beat(10),), "app2": (beat(20, "0"),)}, {"app1": 10})["app2"]
    assert by_hand.startswith("celery beat runs on app2 and on app1 (the inventory's beat host). ")
    assert by_hand.endswith("started outside supervisord by uid 0 (/opt/arches/venv/bin/python3 "
                            "/opt/arches/venv/bin/celery -A demo_proj.celery beat --loglevel=INFO): stop it")
    (_, alone), = extra_beats(inventory, {"app1": (), "app2": (beat(20),)}, {})["app2"]
    assert alone.startswith("celery beat runs on app2, which is not the inventory's beat host app1 (where it does "
                            "not run). Beat belongs on the beat host only.")


def test_without_inventory_hosts_each_host_may_run_one_beat():
    inventory = make_inventory(hosts={})
    assert extra_beats(inventory, {"a": (beat(10),), "b": (beat(20),)}, {"a": 10, "b": 20}) == {}
    assert list(extra_beats(inventory, {"a": (beat(10), beat(11))}, {"a": 10})) == ["a"]


def test_fab_status_marks_the_extra_beat_and_fails():
    inventory = make_inventory(**FLEET)
    statuses = [
        HostStatus("app1", programs=(ProgramRow("celery", "RUNNING", 9), ProgramRow("celerybeat", "RUNNING", 10)),
                   beats=(beat(10),)),
        HostStatus("app2", programs=(ProgramRow("celery", "RUNNING", 19), ProgramRow("celerybeat", "RUNNING", 20)),
                   beats=(beat(20),)),
        HostStatus("app3", programs=(ProgramRow("celery", "RUNNING", 29),), beats=(beat(30, "0"),)),
    ]
    assert fleet_ok(statuses)                # by supervisord's states alone, all is well
    checked = with_beat_check(inventory, statuses)
    assert not fleet_ok(checked)
    assert checked[0] == statuses[0]
    assert [(r.name, r.state, r.pid) for r in checked[1].programs] == [("celery", "RUNNING", 19),
                                                                       ("celerybeat", "EXTRA", 20)]
    assert [(r.name, r.state, r.pid) for r in checked[2].programs] == [("celery", "RUNNING", 29),
                                                                       ("celery beat", "EXTRA", 30)]
    assert "app1" in checked[2].programs[1].detail and "app3" in checked[2].programs[1].detail
    assert checked[1].counts() == (1, 1)


def test_every_hosts_status_looks_for_beats_in_its_one_command():
    inventory = make_inventory(**FLEET)
    for host in inventory.hosts.values():
        assert "section beats beat_processes" in status_script(Target.of(inventory, host))
