"""When verify fails, its line says per program what it saw (tasks/scripts/explain_verify.py):
FATAL with the last error line of its log, RUNNING but not answering, answering with other
queues than its pool's, and for a broker's permission error the setting that is missing."""

from __future__ import annotations

import json
import subprocess

import pytest

from tasks.scripts.explain_verify import explain, last_error
from tasks.supervisor import verify_script

from .conftest import make_inventory, target_of

PROGRAMS = [("celery", "celery@h", "*", "/logs/worker.log"),
            ("exports", "exports@h", "exports,bulk", "/logs/exports.log"),
            ("celerybeat", "", "", "/logs/beat.log")]
RUNNING = ("celery                           RUNNING   pid 10, uptime 0:01:00\n"
           "exports                          RUNNING   pid 11, uptime 0:01:00\n"
           "celerybeat                       RUNNING   pid 12, uptime 0:01:00\n")
ANSWER = json.dumps({"celery@h": [{"name": "celery"}], "exports@h": [{"name": "exports"}, {"name": "bulk"}]})
NOPERM = ("[2026-12-05 10:00:01,000: ERROR/MainProcess] consumer: Cannot connect to redis://demo_proj:**@localhost:"
          "6379/0: NOPERM User demo_proj has no permissions to access the '_kombu.binding.celery' key.")
TRACEBACK = "Traceback (most recent call last):\n  File \"x.py\", line 1\nModuleNotFoundError: No module named 'foo'\n"
KEYPREFIX = 'CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]'


@pytest.mark.parametrize("case,status,answer,logs,expected", [
    ("all well", RUNNING, ANSWER, {}, []),
    ("FATAL, with the last error line of its log",
     RUNNING.replace("RUNNING   pid 11, uptime 0:01:00", "FATAL     Exited too quickly (process log may have details)"),
     "", {"/logs/exports.log": "starting\n" + TRACEBACK + "\n"},
     ["exports: FATAL (it exited at every start); its log ends: ModuleNotFoundError: No module named 'foo'"]),
    ("RUNNING but not answering", RUNNING, json.dumps({"exports@h": [{"name": "exports"}, {"name": "bulk"}]}),
     {"/logs/worker.log": "celery@h ready.\n"},
     ["celery: RUNNING but celery@h does not answer (celery inspect); its log ends: celery@h ready."]),
    ("answering with other queues", RUNNING, json.dumps({"celery@h": [{"name": "celery"}],
                                                         "exports@h": [{"name": "celery"}]}), {},
     ["exports: exports@h answers, but consumes celery, not its pool's exports, bulk"]),
    ("NOPERM: the key prefix setting", RUNNING, json.dumps({"exports@h": [{"name": "exports"}, {"name": "bulk"}]}),
     {"/logs/worker.log": NOPERM + "\n"},
     ["celery: RUNNING but celery@h does not answer (celery inspect); its log ends: " + NOPERM + ". Redis refuses the "
      "project's account (NOPERM): the app does not put the key prefix of settings_local.py in front of its keys "
      f"({KEYPREFIX}); it must read every CELERY_* setting: "
      'app.config_from_object("django.conf:settings", namespace="CELERY")']),
    ("a program supervisord does not know", RUNNING.replace("celerybeat", "other"), ANSWER, {},
     ["celerybeat: supervisord does not know it"]),
    ("still starting, not yet asked", RUNNING.replace("RUNNING   pid 12, uptime 0:01:00", "STARTING"), "", {},
     ["celerybeat: STARTING"]),
])
def test_what_verify_saw_per_program(case, status, answer, logs, expected):
    assert explain(PROGRAMS, status, answer, logs) == expected, case


def test_the_last_error_line_is_the_last_line_that_looks_like_one_else_the_last_line():
    assert last_error("a\nValueError: x\nshutting down\n") == "ValueError: x"
    assert last_error("a\nb\n") == "b"
    assert last_error("") == "(the log is empty)"
    assert last_error("RuntimeError: \x1b[31mred\n") == "RuntimeError: \\x1b[31mred"


def test_the_verify_script_puts_the_explanation_first(tmp_path):
    """verify's own explain(), run by sh with a stand-in for supervisord's status and real logs."""
    log = tmp_path / "worker.log"
    log.write_text("starting\n" + NOPERM + "\n")
    inventory = make_inventory()
    script = verify_script(target_of(inventory), "/home/arches", "h", timeout=1)
    definition = script[script.index("explain() {"):script.index("\ndeadline=")]
    definition = definition.replace("/var/log/celery/my_proj-worker.log", str(log))
    status = RUNNING.replace("exports", "unused")
    test = (f"sv_status() {{ printf '%s' {json.dumps(status)}; }}\n{definition}\n"
            f"out={json.dumps(json.dumps({'other@h': []}))}\nexplain")
    done = subprocess.run(["sh", "-c", test], capture_output=True, text=True)
    assert done.returncode == 0
    first = done.stderr.splitlines()[0]
    assert first.startswith("celery: RUNNING but celery@h does not answer (celery inspect); its log ends: ")
    assert KEYPREFIX in first
