"""The command line as a user types it: a misspelt task, Invoke's --dry, a flag in the wrong
place, a host name that does not resolve. One line each, the exit status a script can
read, and nothing connected to. No server is needed."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fabric.main import Fab

import tasks
from tasks.cli import ns

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INVENTORY = {
    "project": {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
                "user": "arches"},
    "broker": {"kind": "redis"},
    "hosts": {"nowhere.invalid": {"roles": ["broker", "worker", "beat"]}},
}


def run(tmp_path: Path, *args: str, command: str = "fab") -> subprocess.CompletedProcess:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABCELERY_", "FABRIC_"))}
    env.update(FABCELERY_INVENTORY=str(inventory), HOME=str(tmp_path))
    prefix = [str(BIN / "fab"), "-r", str(ROOT)] if command == "fab" else [str(BIN / command)]
    done = subprocess.run([*prefix, *args], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert "Traceback" not in done.stdout + done.stderr
    return done


@pytest.mark.parametrize("typed,said", [
    ("statsu", "fab: no task 'statsu': did you mean 'status'? (fab --list shows them all)"),
    ("undeplyo", "fab: no task 'undeplyo': did you mean 'undeploy'? (fab --list shows them all)"),
    ("restart-celry", "fab: no task 'restart-celry': did you mean 'restart-celery'? (fab --list shows them all)"),
    ("frobnicate", "fab: no task 'frobnicate' (fab --list shows them all)"),
])
def test_a_misspelt_task_gets_the_nearest_name_in_one_line_and_exit_2(tmp_path, typed, said):
    done = run(tmp_path, typed)
    assert done.returncode == 2
    assert done.stderr == said + "\n" and done.stdout == ""


def test_the_fabcelery_command_names_itself_in_the_hint(tmp_path):
    done = run(tmp_path, "stauts", command="fabcelery")
    assert done.returncode == 2
    assert done.stderr == "fabcelery: no task 'stauts': did you mean 'status'? (fabcelery --list shows them all)\n"


@pytest.mark.parametrize("args", [("-R", "deploy"), ("--dry", "deploy"), ("deploy", "-R"), ("undeploy", "--dry")])
def test_invokes_dry_is_refused_pointing_to_dry_run(tmp_path, args):
    done = run(tmp_path, *args)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "--dry-run" in lines[0] and done.stdout == ""


@pytest.mark.parametrize("args,flag", [
    (("deploy", "-d"), "-d"),             # 0.1: --dry-run; before the task: --debug
    (("undeploy", "-p"), "-p"),           # 0.1: --purge; before the task: --pty
    (("logs", "-l", "5"), "-l"),          # 0.1: --lines; before the task: --list
    (("deploy", "-p", "3"), "-p"),        # 0.1: --parallel
])
def test_a_core_flag_after_the_task_name_is_refused(tmp_path, args, flag):
    done = run(tmp_path, *args)
    assert done.returncode == 2
    assert done.stderr == (f"fab: {flag} after '{args[0]}' is not one of its flags (fab --help {args[0]}); "
                           "fab's own flags go before the task name\n")


def test_one_short_flag_for_parallel_on_every_task_and_none_that_is_a_core_flag():
    core = {flag for argument in Fab(namespace=ns).core_args() for flag in argument.names if len(flag) == 1}
    meaning: dict[str, set[str]] = {}
    for name, task in ns.tasks.items():
        # (a copy: Invoke's get_arguments uses up the task's help texts)
        arguments = {a.name: set(a.names) for a in copy.deepcopy(task).get_arguments()}
        if "parallel" in arguments:
            assert "P" in arguments["parallel"], name
        shorts = {flag for names in arguments.values() for flag in names if len(flag) == 1}
        assert not shorts & core, (name, shorts & core)
        for long, names in arguments.items():
            for flag in (f for f in names if len(f) == 1):
                meaning.setdefault(flag, set()).add(long)
    assert {flag: longs for flag, longs in meaning.items() if len(longs) > 1} == {}   # the same on every task
    assert ("json", "j") in [a.names for a in copy.deepcopy(ns["status"]).get_arguments()]
    assert ("lines", "n") in [a.names for a in copy.deepcopy(ns["logs"]).get_arguments()]


def test_help_texts_survive_the_checks(tmp_path):
    done = run(tmp_path, "--help", "deploy")
    assert done.returncode == 0
    assert "how many hosts at once (default 10)" in done.stdout and "show what would change" in done.stdout


def test_a_host_name_that_does_not_resolve_suggests_an_ssh_config_in_its_one_line(tmp_path):
    done = run(tmp_path, "status")
    assert done.returncode == 1
    detail = [line for line in done.stdout.splitlines() if line.startswith("nowhere.invalid ")][0]
    assert "cannot connect to nowhere.invalid:22" in detail
    assert "give that file with -S FILE, or add the host to ~/.ssh/config" in detail


def test_version(tmp_path):
    done = run(tmp_path, "--version", command="fabcelery")
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == f"fabcelery {tasks.__version__}"
    assert tasks.__version__ == "0.2.0"


def test_the_demo_ends_with_commands_to_paste():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import demo
    finally:
        sys.path.remove(str(ROOT / "examples"))
    words = demo.closing_words(ROOT)
    assert "Its inventory is inventory.yaml (host demo)" in words
    assert "\n  .venv/bin/fab -S .demo/ssh_config status\n" in words
