"""fabcelery installed as a user installs it: `pip install` of this checkout into a fresh
virtualenv outside it, then used from directories of the user's own that hold only an
inventory and an ssh config: the `fabcelery` command, and a fabfile.py of the user's that
imports the collection and adds a task of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, FabRun, install_example_project, server

NAME = "inst13"
PROJECT = {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
           "user": "arches", "requirements": "requirements.txt"}
# the checkout's own files that are no part of it (a copy of the tree is installed: pip would
# build in the checkout itself, and an old build/ there could put deleted modules in the wheel)
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".demo", ".testhosts", "build", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", ".venv-compare")
FABFILE = "from fabcelery import ns\nfrom invoke import task\n\n\n@task\ndef where(c):\n" \
          "    print('on', c.original_host)\n\n\nns.add_task(where)\n"


def run(command: list[str], cwd: Path, timeout: int = 900, traceback: bool = False) -> FabRun:
    # the user's environment: none of the checkout's settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABCELERY_", "FABRIC_", "PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    output = done.stdout + done.stderr
    print(f"$ cd {cwd} && {' '.join(command)}\n{output}")   # shown by pytest when a test fails
    assert traceback or "Traceback" not in output
    return FabRun(done.returncode, output)


def user_dir(base: Path, fleet, hosts: dict) -> Path:
    """A directory of the user's: an inventory and an ssh config, nothing of fabcelery."""
    base.mkdir()
    data = {"project": PROJECT, "broker": {"kind": "redis"}, "celery": {"app": "demo_proj.celery"}, "hosts": hosts}
    (base / "inventory.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(fleet.ssh_config_path, base / "ssh_config")
    return base


@pytest.fixture(scope="module")
def installed(fleet, tmp_path_factory):
    work = tmp_path_factory.mktemp("install")
    source = work / "fabcelery-source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(source)], capture_output=True,
                         text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    host = fleet.start(NAME, suite="trixie")
    install_example_project(fleet, host)
    yield {"venv": venv, "bin": venv / "bin", "work": work, "fleet": fleet, "host": host,
           "server": server(fleet, host)}
    fleet.remove(host)


def test_the_package_is_fabcelery_and_no_top_level_tasks(installed):
    python = str(installed["bin"] / "python")
    tasks = run([python, "-c", "import tasks"], cwd=installed["work"], traceback=True)
    assert tasks.returncode == 1 and "No module named 'tasks'" in tasks.output
    where = run([python, "-c", "import fabcelery, fabcelery.configs as c; print(fabcelery.__file__); "
                 "print(sorted(p.name for p in c.TEMPLATES.iterdir()))"], cwd=installed["work"])
    site = str(installed["venv"] / "lib")
    assert where.returncode == 0 and where.output.startswith(site)
    assert "'supervisord.conf.j2'" in where.output
    version = run([str(installed["bin"] / "fabcelery"), "--version"], cwd=installed["work"])
    import tasks as checkout
    assert version.returncode == 0 and version.output.startswith(f"fabcelery {checkout.__version__}\nFabric ")


def test_fabcelery_lists_deploys_and_shows_status_from_a_directory_of_its_own(installed):
    here = user_dir(installed["work"] / "ops", installed["fleet"], {NAME: {"roles": ["broker", "worker", "beat"]}})
    fabcelery = str(installed["bin"] / "fabcelery")
    listed = run([fabcelery, "--list"], cwd=here)
    assert listed.returncode == 0
    for name in ("deploy", "status", "restart-celery", "undeploy"):
        assert re.search(rf"^  {name}\b", listed.output, re.M), name
    deploy = run([fabcelery, "-S", "ssh_config", "deploy"], cwd=here)
    assert deploy.returncode == 0
    assert deploy.recap()[NAME]["failed"] == 0 and deploy.recap()[NAME]["changed"] >= 5
    status = run([fabcelery, "-S", "ssh_config", "status"], cwd=here)
    assert status.returncode == 0
    assert re.search(rf"^{NAME}\s+celery\s+RUNNING", status.output, re.M)
    srv = installed["server"]
    assert srv.service("demo_proj-supervisord").is_running
    # --inventory names another file, from anywhere; and it wins over FABCELERY_INVENTORY's
    (here / "inventory.yaml").rename(here / "prod.yaml")
    named = run([fabcelery, "-S", str(here / "ssh_config"), "--inventory", str(here / "prod.yaml"), "status"],
                cwd=installed["work"])
    assert named.returncode == 0 and re.search(rf"^{NAME}\s+celerybeat\s+RUNNING", named.output, re.M)
    # an undeploy's dry run heads its diffs with what they show: the file after the undeploy
    dry = run([fabcelery, "-S", str(here / "ssh_config"), "--inventory", str(here / "prod.yaml"), "undeploy",
               "--dry-run"], cwd=installed["work"])
    assert dry.returncode == 0
    assert "+++ /opt/arches/demo_proj/demo_proj/settings_local.py (after undeploy)" in dry.output
    assert "(after deploy)" not in dry.output


def test_a_users_fabfile_imports_the_collection_and_adds_its_own_task(installed):
    # a second host in the inventory, never started: `-H inst13` must run our tasks once, for
    # inst13 only (the concurrent executor); a task of the user's own gets Fabric's Connection
    internal = installed["host"].internal_ip
    here = user_dir(installed["work"] / "myproject", installed["fleet"], {
        NAME: {"roles": ["broker", "worker", "beat"], "internal_address": internal},
        "spare": {"address": "127.0.0.1", "port": 9, "roles": ["worker"]},
    })
    (here / "fabfile.py").write_text(FABFILE)
    fab = str(installed["bin"] / "fab")
    deploy = run([fab, "-S", "ssh_config", "-H", NAME, "deploy"], cwd=here)
    assert deploy.returncode == 0
    assert set(deploy.recap()) == {NAME} and deploy.recap()[NAME]["failed"] == 0
    status = run([fab, "-S", "ssh_config", "-H", f"{NAME},spare", "status"], cwd=here)
    assert status.returncode == 1                      # spare cannot be reached
    assert status.output.count("HOST ") == 1           # one table for both hosts: one call, not one per host
    assert re.search(rf"^{NAME}\s+celery\s+RUNNING", status.output, re.M)
    assert re.search(r"^spare\s+.*UNREACHABLE", status.output, re.M)
    own = run([fab, "-S", "ssh_config", "-H", NAME, "where"], cwd=here)
    assert own.returncode == 0 and f"on {NAME}" in own.output
    listed = run([fab, "--list"], cwd=here)
    assert re.search(r"^  where\b", listed.output, re.M) and re.search(r"^  deploy\b", listed.output, re.M)
