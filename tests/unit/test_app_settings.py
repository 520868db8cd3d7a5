"""A deploy proves the app reads its settings: the comparison of what the block sets with what
the app sees (tasks/scripts/app_settings.py), its messages, and when the deploy runs the check
(tasks/appcheck.py)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from tasks.appcheck import expected_settings
from tasks.deploy import plan_deploy
from tasks.layout import Layout
from tasks.plan import Event
from tasks.scripts import app_settings, text
from tasks.scripts.app_settings import broker_urls, differences, load_failure, report, show_urls

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of

REDIS = {"broker": broker_urls("redis://my_proj:pw@localhost:6379/0"), "keyprefix": "my_proj:", "quorum": False,
         "task_serializer": "json", "result_serializer": "json", "accept_content": ["json"]}
CLUSTER = {**REDIS, "broker": broker_urls("amqp://my_proj:pw@127.0.0.1:5672/my_proj;amqp://my_proj:pw@10.0.0.2:5672/"
                                          "my_proj"), "keyprefix": "", "quorum": True}
# what an app sees that reads every CELERY_* setting (config_from_object(..., namespace="CELERY"))
SEES_ALL = {"broker": REDIS["broker"], "keyprefix": "my_proj:", "result_backend": "redis",
            "result_keyprefix": "my_proj:", "queue_type": "classic", "confirm_publish": None,
            "task_serializer": "json", "result_serializer": "json", "accept_content": ["json"]}
# ... and one that takes only CELERY_BROKER_URL: Celery's defaults for the rest
BROKER_URL_ONLY = {**SEES_ALL, "keyprefix": None, "result_backend": "", "result_keyprefix": None}
KEYPREFIX = 'CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]'


@pytest.mark.parametrize("case,expected,seen,missing", [
    ("an app that reads every CELERY_* setting", REDIS, SEES_ALL, []),
    ("an app that reads only CELERY_BROKER_URL: the key prefix", REDIS, BROKER_URL_ONLY, [KEYPREFIX]),
    ("... and with a Redis result backend of its own: its prefix too", REDIS,
     {**BROKER_URL_ONLY, "result_backend": "redis"},
     [KEYPREFIX, 'CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS["global_keyprefix"]']),
    ("an rpc:// result backend needs no prefix", REDIS, {**SEES_ALL, "result_backend": "rpc", "result_keyprefix": None},
     []),
    ("an app that reads nothing: no broker at all", REDIS, {**BROKER_URL_ONLY, "broker": None},
     ["CELERY_BROKER_URL", KEYPREFIX]),
    ("another host", REDIS, {**SEES_ALL, "broker": broker_urls("redis://my_proj:pw@10.0.0.9:6379/0")},
     ["CELERY_BROKER_URL"]),
    ("another user", REDIS, {**SEES_ALL, "broker": broker_urls("redis://other:pw@localhost:6379/0")},
     ["CELERY_BROKER_URL"]),
    ("another password is not told apart (never compared, never shown)", REDIS,
     {**SEES_ALL, "broker": broker_urls("redis://my_proj:other@localhost:6379/0")}, []),
    ("another vhost (database)", REDIS, {**SEES_ALL, "broker": broker_urls("redis://my_proj:pw@localhost:6379/1")},
     ["CELERY_BROKER_URL"]),
    ("pickle accepted", REDIS, {**SEES_ALL, "accept_content": ["json", "pickle"]}, ["CELERY_ACCEPT_CONTENT"]),
    ("pickled tasks and results", REDIS, {**SEES_ALL, "task_serializer": "pickle", "result_serializer": "pickle"},
     ["CELERY_TASK_SERIALIZER", "CELERY_RESULT_SERIALIZER"]),
    ("a cluster: an app that reads every setting", CLUSTER,
     {**SEES_ALL, "broker": CLUSTER["broker"], "keyprefix": None, "result_keyprefix": None, "result_backend": "rpc",
      "queue_type": "quorum", "confirm_publish": True}, []),
    ("a cluster: an app that reads only CELERY_BROKER_URL keeps classic queues", CLUSTER,
     {**BROKER_URL_ONLY, "broker": CLUSTER["broker"]},
     ["CELERY_TASK_DEFAULT_QUEUE_TYPE", 'CELERY_BROKER_TRANSPORT_OPTIONS["confirm_publish"]']),
    ("a cluster: the nodes in another order", CLUSTER, {**SEES_ALL, "broker": CLUSTER["broker"][::-1],
                                                        "queue_type": "quorum", "confirm_publish": True},
     ["CELERY_BROKER_URL"]),
])
def test_what_the_app_does_not_see(case, expected, seen, missing):
    assert [d[0] for d in differences(expected, seen)] == missing, case


def test_the_message_names_each_setting_the_cause_and_the_fix_and_never_a_password():
    seen = {**BROKER_URL_ONLY, "broker": broker_urls("amqp://guest:hunter2@localhost:5672//")}
    message = report("my_proj.celery", "/opt/arches/my_proj/my_proj/settings_local.py", differences(REDIS, seen))
    first, *rest = message.splitlines()
    assert first == ("the Celery app my_proj.celery does not see 2 settings of fabcelery's block in "
                     f"/opt/arches/my_proj/my_proj/settings_local.py: CELERY_BROKER_URL, {KEYPREFIX}")
    assert ("  CELERY_BROKER_URL: the block sets redis://my_proj@localhost:6379/0, the app has "
            "amqp://guest@localhost:5672/") in message
    assert f"  {KEYPREFIX}: the block sets 'my_proj:', the app has none" in message
    assert "NOPERM" in message
    assert "only CELERY_BROKER_URL" in message
    assert 'app.config_from_object("django.conf:settings", namespace="CELERY")' in message
    assert rest[-1] == "Nothing was started or restarted."
    assert "hunter2" not in message and "pw" not in message.replace("password", "")


def test_an_app_with_no_broker_is_said_to_use_celerys_default():
    assert show_urls(None) == "none (so Celery's default, amqp://guest@localhost//)"


def test_an_app_that_does_not_load_is_told_by_its_tracebacks_last_line():
    trace = textwrap.dedent("""\
        Traceback (most recent call last):
          File "<string>", line 1, in <module>
          File "/opt/arches/my_proj/my_proj/celery.py", line 3, in <module>
            raise RuntimeError("the project is broken")
        RuntimeError: the project is broken
        """)
    message = load_failure("my_proj.celery", "/opt/arches/my_proj", trace)
    first, *rest = message.splitlines()
    assert first == ("the Celery app my_proj.celery does not load (as the worker would, in /opt/arches/my_proj): "
                     "RuntimeError: the project is broken")
    assert '      raise RuntimeError("the project is broken")' in rest


def fake_celery(tmp_path):
    """A stand-in for celery's find_app (a package `celery` on the path): the site directory."""
    site = tmp_path / "site"
    (site / "celery" / "app").mkdir(parents=True)
    (site / "celery" / "__init__.py").write_text("")
    (site / "celery" / "app" / "__init__.py").write_text("")
    (site / "celery" / "app" / "utils.py").write_text(
        "import importlib\ndef find_app(name):\n    return importlib.import_module(name).app\n")
    return site


@pytest.mark.parametrize("app_module,expect_rc,expect_first", [
    ("from celery_fake import App\napp = App({'broker_url': 'redis://my_proj:pw@localhost:6379/0', "
     "'broker_transport_options': {'global_keyprefix': 'my_proj:'}})\n", 0, ""),
    ("from celery_fake import App\napp = App({'broker_url': 'redis://my_proj:pw@localhost:6379/0'})\n", 1,
     f"the Celery app my_proj.celery does not see a setting of fabcelery's block in X: {KEYPREFIX}"),
    ("import nonexistent_module\n", 1,
     "the Celery app my_proj.celery does not load (as the worker would, in {path}): "
     "ModuleNotFoundError: No module named 'nonexistent_module'"),
    ("import sys\nsys.exit(3)\n", 1,
     "the Celery app my_proj.celery does not load (as the worker would, in {path}): SystemExit: 3"),
])
def test_the_script_loads_the_app_as_the_worker_does_and_reports(tmp_path, app_module, expect_rc, expect_first):
    """The program itself, with a stand-in for celery's find_app (a module `celery` on the path)."""
    site = fake_celery(tmp_path)
    (site / "celery_fake.py").write_text(
        "class App:\n    def __init__(self, conf):\n        self.conf = conf\n")
    project = tmp_path / "project"
    (project / "my_proj").mkdir(parents=True)
    (project / "my_proj" / "__init__.py").write_text("")
    (project / "my_proj" / "celery.py").write_text(app_module)
    expected = {**{k: v for k, v in REDIS.items() if k not in ("task_serializer", "result_serializer",
                                                                "accept_content")}, "settings_file": "X"}
    done = subprocess.run([sys.executable, "-c", text("app_settings.py"), "my_proj.celery", str(project),
                           "my_proj.settings", json.dumps(expected)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(site)}, cwd=tmp_path)
    assert done.returncode == expect_rc, done.stderr
    assert done.stderr.splitlines()[:1] == ([expect_first.format(path=project)] if expect_first else [])
    assert "pw" not in done.stderr


# an app that records which settings module it was loaded with when its configuration is read
RECORDING_APP = textwrap.dedent("""\
    import os
    {sets}
    class App:
        @property
        def conf(self):
            with open(os.environ["SEEN"], "w") as seen:
                seen.write(os.environ.get("DJANGO_SETTINGS_MODULE", "(unset)"))
            return {{"broker_url": "redis://my_proj:pw@localhost:6379/0",
                    "broker_transport_options": {{"global_keyprefix": "my_proj:"}}}}
    app = App()
    """)


@pytest.mark.parametrize("app_sets,has_settings,loaded_with", [
    (False, True, "my_proj.settings"),      # the project's NAME.settings, when the app sets none
    (True, True, "my_proj.other"),          # the app's own choice wins
    (False, False, "(unset)"),              # no NAME/settings.py: nothing is made up
])
def test_the_check_sets_name_settings_only_when_the_app_did_not_and_the_project_has_one(
        tmp_path, app_sets, has_settings, loaded_with):
    site = fake_celery(tmp_path)
    project = tmp_path / "project"
    (project / "my_proj").mkdir(parents=True)
    (project / "my_proj" / "__init__.py").write_text("")
    sets = 'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "my_proj.other")' if app_sets else ""
    (project / "my_proj" / "celery.py").write_text(RECORDING_APP.format(sets=sets))
    if has_settings:
        (project / "my_proj" / "settings.py").write_text("")
    expected = {**{k: v for k, v in REDIS.items() if k not in ("task_serializer", "result_serializer",
                                                                "accept_content")}, "settings_file": "X"}
    seen = tmp_path / "seen"
    done = subprocess.run([sys.executable, "-c", text("app_settings.py"), "my_proj.celery", str(project),
                           "my_proj.settings", json.dumps(expected)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(site), "SEEN": str(seen)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert seen.read_text() == loaded_with


# --- when a deploy runs the check -------------------------------------------------------


def checks(inventory, facts, password=PASSWORD) -> list[tuple[str, str]]:
    plans = {p.name: p for p in plan_deploy(target_of(inventory), facts, password)}
    return [(a.summary.split(" ")[0], a.when) for a in plans["supervisord"].checks]


def test_a_first_deploy_checks_the_app_before_it_starts_supervisord():
    inventory = make_inventory()
    plans = {p.name: p for p in plan_deploy(target_of(inventory), fresh_facts(), PASSWORD)}
    (check,) = plans["supervisord"].checks
    assert check.summary == "check that my_proj.celery sees the settings of settings_local.py (loaded as arches)"
    assert check.when is None
    # as the project user, with a clean environment, by the virtualenv's Python; no password on it
    assert check.script.startswith("runuser -u arches -- env -i HOME=/home/arches USER=arches ")
    assert " /opt/arches/venv/bin/python -c " in check.script
    assert PASSWORD not in check.script
    assert any(a.summary.startswith("start supervisord") for a in plans["supervisord"].actions)


def test_a_deploy_with_nothing_changed_does_not_check():
    inventory = make_inventory()
    assert checks(inventory, deployed_facts(inventory)) == []


def test_a_program_stopped_by_hand_is_started_without_a_check():
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    facts = replace(facts, supervisor_status=facts.supervisor_status.replace("RUNNING   pid 101, uptime 0:10:00",
                                                                             "STOPPED"))
    plans = {p.name: p for p in plan_deploy(target_of(inventory), facts, PASSWORD)}
    assert plans["supervisord"].actions and not plans["supervisord"].checks


@pytest.mark.parametrize("case,change,expected", [
    ("settings_local.py changed", "settings", [("check", None)]),
    ("a program's config changed", "concurrency", [("check", None)]),
    ("the requirements changed: checked if pip changes the virtualenv", "requirements",
     [("check", Event.VENV_CHANGED)]),
    ("only the unit's stop timeout: daemon-reload, nothing restarts", "stopwaitsecs", []),
])
def test_a_change_that_restarts_programs_checks_the_app_first(case, change, expected):
    before = make_inventory()
    facts = deployed_facts(before)
    after = make_inventory(**({"celery__concurrency": 4} if change == "concurrency" else {}))
    if change == "settings":
        facts.contents[Layout(after.project).settings_local] = "SECRET_KEY = 'x'\n"
    if change == "requirements":
        facts.contents[Layout(after.project).python_stamp] = "celery[redis]==5.6.0\n"
    if change == "stopwaitsecs":
        facts.contents[Layout(after.project).unit_file] = facts.contents[Layout(after.project).unit_file].replace(
            "TimeoutStopSec=", "TimeoutStopSec=1")
        facts.checksums[Layout(after.project).unit_file] = "old"
    assert checks(after, facts) == expected, case


def test_what_the_check_expects_is_what_the_block_sets():
    inventory = make_inventory()
    plans = plan_deploy(target_of(inventory), fresh_facts(), PASSWORD)
    (check,) = next(p for p in plans if p.name == "supervisord").checks
    expected = json.loads(shlex.split(check.script)[-1])
    assert expected == {"settings_file": "/opt/arches/my_proj/my_proj/settings_local.py",
                        "broker": [{"scheme": "redis", "host": "localhost", "port": 6379, "vhost": "0",
                                    "user": "my_proj"}],
                        "keyprefix": "my_proj:", "quorum": False, "task_serializer": "json",
                        "result_serializer": "json", "accept_content": ["json"]}
    assert expected == expected_settings(target_of(inventory), {"broker_url": f"redis://my_proj:{PASSWORD}@localhost:6379/0",
                                                     "redis_keyprefix": "my_proj:"})
    assert app_settings.FIX in text("app_settings.py")
