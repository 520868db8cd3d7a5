"""A restart loses no task it could keep (tasks/shutdown.py): which workers hand their running
tasks back when their warm shutdown's time is up, what their program files and the settings
block then say, and what the block's few lines do in a worker."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.checksum import sha256
from tasks.configs import plan_configs, template_context
from tasks.deploy import plan_deploy
from tasks.inventory_load import parse_inventory
from tasks.layout import Layout
from tasks.probe import Facts
from tasks.programs import stop_seconds
from tasks.pyenv import python_stamp, requirements
from tasks.shutdown import GRACE, celery_hands_back, handback_seconds, pool_hands_back, supervisor_stopwaitsecs
from tasks.target import Target

from .conftest import BASE, PASSWORD, deployed_facts, fresh_facts, target_of

REQUIREMENTS = "/opt/arches/my_proj/requirements.txt"


def inventory(pools=None, concurrency=True, **project):
    data = copy.deepcopy(BASE)
    if not concurrency:
        del data["celery"]["concurrency"]
    if pools is not None:
        data["celery"]["pools"] = pools
    data["project"].update(project)
    return parse_inventory(data, Path("inventory.yaml"))


@pytest.mark.parametrize(("version", "hands_back"), [
    ("5.3.6", False),          # Arches 7.5 to 8.0: the cold shutdown kills, and acknowledges a lost task
    ("5.4.0", False),
    ("5.5.0", True),           # cancel_active_requests: unacknowledged tasks go back to the broker
    ("5.5.0rc4", True),
    ("5.6.3", True),           # the example project's pin
    ("5.7.0", True),           # fabcelery's own default
    ("6.0.0", True),
    ("4.4.7", False),
])
def test_which_celery_hands_tasks_back(version, hands_back):
    assert celery_hands_back(version) is hands_back


@pytest.mark.parametrize(("kind", "hands_back"), [
    (None, True),              # prefork, Celery's default
    ("prefork", True),
    ("threads", False),        # Celery cannot cancel a thread's task: supervisord KILLs as before
    ("solo", False),
])
def test_which_pools_hand_tasks_back(kind, hands_back):
    pool = {"pool": kind} if kind else {}
    inv = inventory({"celery": {**pool, "stopwaitsecs": 90}}, concurrency=kind != "solo")
    assert pool_hands_back(inv.celery.pools["celery"]) is hands_back
    assert handback_seconds(list(inv.celery.pools.values()), "5.6.3") == ({"celery": 90} if hands_back else {})


@pytest.mark.parametrize(("version", "expected"), [
    ("5.3.6", {}),
    ("5.6.3", {"celery": 600, "exports": 3600}),
])
def test_each_prefork_pool_gets_its_own_warm_shutdown_before_the_hand_back(version, expected):
    inv = inventory({"celery": {}, "exports": {"queues": ["exports"], "stopwaitsecs": 3600},
                     "light": {"pool": "threads", "stopwaitsecs": 60}})
    pools = list(inv.celery.pools.values())
    handback = handback_seconds(pools, version)
    assert handback == expected
    # supervisord waits for the warm shutdown, and the cold one where there is one
    assert {p.name: supervisor_stopwaitsecs(p, handback) for p in pools} == {
        "celery": 600 + (GRACE if handback else 0), "exports": 3600 + (GRACE if handback else 0), "light": 60}


def rendered(inv, facts) -> dict[str, str]:
    host = inv.hosts["prod"]
    target = Target.of(inv, host)
    context = template_context(target, facts, "/home/arches", "redis://localhost:6379/0", "redis-server.service")
    plan = plan_configs(target, facts, context)
    return {Path(u.target).name: u.content for a in plan.actions for u in a.uploads}


def line(text: str, prefix: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(prefix))


@pytest.mark.parametrize(("facts", "hands_back"), [
    ({"dists": {"celery": "5.6.3"}}, True),                          # the virtualenv's Celery, from the probe
    ({"dists": {"celery": "5.3.6"}}, False),
    # before the virtualenv exists: the project's pin
    ({"contents": {REQUIREMENTS: "Django>=4.2\ncelery==5.3.6\n"}}, False),
    ({"contents": {REQUIREMENTS: "celery[redis]==5.5.2\n"}}, True),
    ({}, True),                                                       # else fabcelery's own (5.7.0)
    # the virtualenv's wins over the pin
    ({"dists": {"celery": "5.3.6"}, "contents": {REQUIREMENTS: "celery==5.6.3\n"}}, False),
])
def test_the_program_file_and_the_block_follow_the_hosts_celery(facts, hands_back):
    inv = inventory(requirements="requirements.txt")
    facts = dict(facts)
    contents = {"/opt/arches/my_proj/my_proj/settings_local.py": "SECRET_KEY = 'x'\n", **facts.pop("contents", {})}
    files = rendered(inv, fresh_facts(contents=contents, **facts))
    conf, unit = files["my_proj-celeryd.conf"], files["my_proj-supervisord.service"]
    settings = files["settings_local.py"]
    if hands_back:
        assert line(conf, "stopwaitsecs=") == "stopwaitsecs=630"
        assert line(conf, "environment=").endswith(',FABCELERY_HANDBACK_AFTER="600"')
        assert line(unit, "TimeoutStopSec=") == "TimeoutStopSec=690"
        assert "def _fabcelery_handback():" in settings
    else:
        assert line(conf, "stopwaitsecs=") == "stopwaitsecs=600"
        assert "FABCELERY_HANDBACK_AFTER" not in conf
        assert line(unit, "TimeoutStopSec=") == "TimeoutStopSec=660"
        assert "_fabcelery_handback" not in settings
    compile(settings, "settings_local.py", "exec")


def test_a_host_with_beat_only_has_no_hand_back_in_its_block():
    data = copy.deepcopy(BASE)
    data["hosts"]["prod"]["roles"] = ["broker", "beat"]
    inv = parse_inventory(data, Path("inventory.yaml"))
    assert "_fabcelery_handback" not in rendered(inv, fresh_facts(dists={"celery": "5.6.3"}))["settings_local.py"]


def test_a_stop_waits_for_each_workers_cold_shutdown_too():
    inv = inventory({"celery": {"stopwaitsecs": 100}, "exports": {"queues": ["exports"], "stopwaitsecs": 200}})
    assert stop_seconds(target_of(inv).programs) == 100 + GRACE + 200 + GRACE + 60   # and beat's


# --- the block's lines in a worker: a fake celery (its signal and its logger) ---------------

FAKE_CELERY = {
    "celery/__init__.py": "",
    "celery/utils/__init__.py": "",
    "celery/utils/log.py": "import logging\nget_logger = logging.getLogger\n",
    "celery/signals.py": textwrap.dedent("""\
        class Signal:
            def __init__(self):
                self.receivers = []
            def connect(self, receiver, weak=True):
                self.receivers.append(receiver)
            def send(self, sender=None, **named):
                for receiver in self.receivers:
                    receiver(sender=sender, **named)
        worker_shutting_down = Signal()
        """),
}

WORKER = textwrap.dedent("""\
    import os, signal, sys, time
    started = time.monotonic()
    def quit(signum, frame):
        print(f"QUIT after {time.monotonic() - started:.1f}")
        sys.exit(0)
    signal.signal(signal.SIGQUIT, quit)
    exec(open(sys.argv[1]).read(), {"__name__": "settings_local"})
    from celery.signals import worker_shutting_down
    for how in sys.argv[2].split(","):
        worker_shutting_down.send(sender="celery@prod", sig="SIGTERM", how=how, exitcode=0)
    time.sleep(3)
    print("no QUIT")
    """)


@pytest.fixture
def worker(tmp_path):
    for name, content in FAKE_CELERY.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    settings = rendered(inventory(), fresh_facts(dists={"celery": "5.6.3"}))["settings_local.py"]
    (tmp_path / "settings_local.py").write_text(settings)
    (tmp_path / "worker.py").write_text(WORKER)

    def run(hows: str, env: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "settings_local.py"),
                               hows], capture_output=True, text=True, timeout=30,
                              env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", **env})
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr
    return run


def test_a_worker_in_its_warm_shutdown_sends_itself_quit_after_its_seconds(worker):
    out = worker("Warm", {"FABCELERY_HANDBACK_AFTER": "1"})
    assert "QUIT after 1." in out, out
    assert "fabcelery: 1 s of warm shutdown are up: QUIT" in out, out


def test_a_second_term_does_not_start_a_second_clock(worker):
    out = worker("Warm,Warm,Cold", {"FABCELERY_HANDBACK_AFTER": "1"})
    assert out.count("of warm shutdown are up") == 1, out


@pytest.mark.parametrize(("hows", "env"), [
    ("Cold", {"FABCELERY_HANDBACK_AFTER": "1"}),    # QUIT itself: Celery's cold shutdown, nothing to add
    ("Warm", {}),                                    # not a worker of fabcelery's (a web process, a shell)
])
def test_nothing_else_gets_a_quit(worker, hows, env):
    assert "no QUIT" in worker(hows, env)


# --- what a deploy restarts when the hand-back comes (or goes) ------------------------------


def supervisord_actions(version_before: str, version_now: str, settings_too: str = "") -> list[str]:
    """The supervisord step's actions on a host deployed while its Celery was `version_before`,
    deployed again with `version_now` (and `settings_too` added to settings_local.py's block)."""
    inv = inventory()
    layout = Layout(inv.project)
    then = fresh_facts(dists={"celery": version_before})
    uploads = {u.target: u.content for p in plan_deploy(target_of(inv), then, PASSWORD)
               for a in p.actions for u in a.uploads}
    facts = deployed_facts(inv)
    settings = uploads[layout.settings_local].replace("CELERY_ACCEPT_CONTENT", settings_too + "CELERY_ACCEPT_CONTENT")
    dists = {**facts.dists, "celery": version_now}
    # the virtualenv as the last pip run left it, with that Celery: pip has nothing to do
    target = target_of(inv)
    stamp = python_stamp(target, requirements(target, Facts(dists=dists)), fresh_facts())
    facts = replace(facts, dists=dists,
                    checksums={**facts.checksums, **{t: sha256(c) for t, c in uploads.items()}},
                    contents={**facts.contents, layout.settings_local: settings,
                              layout.unit_file: uploads[layout.unit_file], layout.python_stamp: stamp})
    plans = {p.name: p for p in plan_deploy(target_of(inv), facts, PASSWORD)}
    return [a.summary for a in plans["supervisord"].actions]


@pytest.mark.parametrize(("before", "now", "settings_too", "expected"), [
    # the project's Celery goes to 5.5+ (or the first deploy of this fabcelery): the workers' files
    # and the block's hand-back change; beat does not run those lines and keeps running
    ("5.3.6", "5.6.3", "", ["systemctl daemon-reload", "reread and update (celery)"]),
    # and back: the hand-back goes, the same restarts
    ("5.6.3", "5.3.6", "", ["systemctl daemon-reload", "reread and update (celery)"]),
    # a change of the block that beat reads too still restarts beat
    ("5.3.6", "5.6.3", "CELERY_TIMEZONE = 'UTC'\n",
     ["systemctl daemon-reload", "reread and update (celery)", "restart celerybeat (settings_local.py changed)"]),
    ("5.6.3", "5.6.3", "CELERY_TIMEZONE = 'UTC'\n", ["restart celery, celerybeat (settings_local.py changed)"]),
    ("5.6.3", "5.6.3", "", []),
])
def test_the_hand_back_restarts_the_workers_only(before, now, settings_too, expected):
    assert [a for a in supervisord_actions(before, now, settings_too) if not a.startswith("check that")] == expected
