"""Bad input, as a user gives it to `fab`: one clear paragraph and exit status 2, before any
host is contacted. No server is needed: the hosts named do not exist, so a run that got
as far as connecting would fail differently (exit status 1, "cannot connect")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
GOOD = {
    "project": {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
                "user": "arches"},
    "broker": {"kind": "redis"},
    "celery": {"concurrency": 2},
    "hosts": {"nowhere.invalid": {"roles": ["broker", "worker", "beat"]}},
}


def fab(tmp_path: Path, data: dict | str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("FABCELERY_", "FABRIC_"))}
    environment.update(FABCELERY_INVENTORY=str(inventory), HOME=str(tmp_path), **(env or {}))
    done = subprocess.run([FAB, "-r", str(ROOT), *args], capture_output=True, text=True, env=environment,
                          timeout=60)
    assert "Traceback" not in done.stdout + done.stderr
    return done


def with_change(path: str, value) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return data


def test_a_good_inventory_gets_as_far_as_connecting(tmp_path):
    # the control for the tests below: their exit status 2 comes before any connection
    done = fab(tmp_path, GOOD, "deploy", "--dry-run")
    assert done.returncode == 1
    assert "nowhere.invalid" in done.stdout and "failed" in done.stdout


@pytest.mark.parametrize("path,value,said", [
    ("project.pathh", "/opt/x", "'project.pathh' is not a known key; did you mean 'path'?"),
    ("celery.concurrency", "four", "'celery.concurrency' must be a whole number from 1 to 256, not a str"),
    ("project.path", "/opt/x\n", "'project.path' must be an absolute path"),
    ("project.name", "demo;reboot", "'project.name' must be a Python package name"),
    ("project.user", "arches\n", "'project.user' must be a user name"),
    ("project.virtualenv", "/opt/venv; rm -rf /", "'project.virtualenv' must be an absolute path"),
    ("hosts", {"bad host": {}}, "'hosts.bad host' is not a usable host name"),
])
def test_bad_inventory_values_exit_2_naming_the_key(tmp_path, path, value, said):
    done = fab(tmp_path, with_change(path, value), "deploy")
    assert done.returncode == 2
    assert said in done.stderr and "nothing was changed" in done.stderr
    assert done.stdout == ""


def test_bad_yaml_exits_2(tmp_path):
    done = fab(tmp_path, "project: [unclosed\n", "deploy")
    assert done.returncode == 2 and "is not valid YAML" in done.stderr


@pytest.mark.parametrize("name", ["web;reboot", "web$(id)", "deploy@web:70000"])
def test_a_bad_host_name_on_the_command_line_exits_2(tmp_path, name):
    done = fab(tmp_path, GOOD, "-H", name, "deploy")
    assert done.returncode == 2
    assert f"-H: {name!r} is not a host name or SSH destination" in done.stderr


def test_a_missing_template_directory_exits_2(tmp_path):
    done = fab(tmp_path, GOOD, "deploy", env={"FABCELERY_TEMPLATES": str(tmp_path / "nope")})
    assert done.returncode == 2 and "FABCELERY_TEMPLATES=" in done.stderr and "no such directory" in done.stderr
