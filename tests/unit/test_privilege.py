"""The privilege model, decided and rendered: root runs system binaries only, the project
user runs the virtualenv's programs, and root follows no link that user could have
planted (tasks/scripts/nofollow.py runs here for real)."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tasks.deploy import plan_deploy
from tasks.layout import Layout
from tasks.operations import logs_operation, restart_operation
from tasks.probe import PathState, ProbeSpec, parse_probe, probe_script
from tasks.report import printable
from tasks.scripts import install_nofollow, set_owner_mode
from tasks.status import status_script
from tasks.supervisor import parse_status
from tasks.target import Target

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of
from .test_operations import FakeHost

VENV = "/opt/arches/venv"


def steps(inventory, facts):
    return {p.name: p for p in plan_deploy(target_of(inventory), facts, PASSWORD)}


def every_script(plans) -> str:
    return "\n".join(a.script for p in plans.values() for a in p.actions)


def root_runs_the_virtualenv(script: str) -> list[str]:
    """Lines of a root script that start a program of the virtualenv not through runuser."""
    return [line for line in script.splitlines()
            if f"{VENV}/bin/" in line and "runuser -u arches" not in line and "--hostname" not in line]


@pytest.mark.parametrize("facts", [fresh_facts(), fresh_facts(systemd=False)], ids=["systemd", "no-systemd"])
def test_no_step_of_a_first_deploy_runs_the_virtualenv_as_root(facts):
    plans = steps(make_inventory(), facts)
    script = every_script(plans)
    assert f"runuser -u arches -- {VENV}/bin/supervisord" in script or facts.systemd
    assert root_runs_the_virtualenv(script) == []


def test_day_two_scripts_run_the_virtualenv_as_the_project_user_only():
    inventory = make_inventory()
    host = inventory.hosts["prod"]
    for script in (status_script(Target.of(inventory, host)), restart_operation(Target.of(inventory, host)).script,
                   logs_operation(Target.of(inventory, host), 5).script):
        assert root_runs_the_virtualenv(script) == []
    assert "/usr/bin/python3 -I -S -c" in status_script(Target.of(inventory, host))


def test_the_unit_runs_supervisord_as_the_project_user_with_runtime_directories():
    inventory = make_inventory()
    unit = next(u.content for a in steps(inventory, fresh_facts())["configs"].actions for u in a.uploads
                if u.target.endswith(".service"))
    assert "\nUser=arches\nGroup=arches\n" in unit and "\nNoNewPrivileges=yes\n" in unit
    assert "\nRuntimeDirectory=my_proj-supervisor my_proj-celery\nRuntimeDirectoryMode=0750\n" in unit
    assert "ExecStartPre" not in unit


def test_a_link_in_place_of_settings_local_stops_the_deploy_before_anything_runs():
    facts = deployed_facts()
    layout = Layout(make_inventory().project)
    facts.paths[layout.settings_local] = PathState("link", "arches", "arches", "777")
    target = Target.of(make_inventory(celery__concurrency=5), make_inventory().hosts["prod"])
    plans = plan_deploy(target, facts, PASSWORD)
    failed = [p for p in plans if p.error]
    assert [p.name for p in failed] == ["configs"]
    assert failed[0].error.startswith(f"{layout.settings_local} is a symbolic link: fabcelery writes its block "
                                      "only into a regular file and never through a link")


def test_a_link_in_place_of_a_log_file_or_the_project_directory_is_refused():
    inventory = make_inventory()
    layout = Layout(inventory.project)
    facts = deployed_facts()
    facts.paths[layout.worker_log] = PathState("link", "arches", "arches", "777")
    assert steps(inventory, facts)["system"].error.startswith(f"{layout.worker_log} is a symbolic link")
    facts = fresh_facts(paths={"/opt/arches/my_proj/my_proj": PathState("link", "arches", "arches", "777")})
    assert plan_deploy(target_of(inventory), facts, PASSWORD)[0].error.startswith(
        "/opt/arches/my_proj/my_proj is a symbolic link")


def test_settings_local_is_written_by_the_no_follow_installer():
    upload = next(u for a in steps(make_inventory(), fresh_facts())["configs"].actions for u in a.uploads
                  if u.target.endswith("settings_local.py"))
    assert upload.nofollow and (upload.group, upload.mode) == ("arches", "0640")


@pytest.mark.parametrize("parent_owner, makes_dir", [("root", True), ("arches", False)])
def test_a_new_virtualenv_is_made_by_root_only_in_a_directory_of_roots(parent_owner, makes_dir):
    facts = fresh_facts(paths={"/opt/arches/my_proj/my_proj": PathState("directory", "root", "root", "755"),
                               "/opt/arches": PathState("directory", parent_owner, parent_owner, "755")})
    script = steps(make_inventory(), facts)["python"].actions[0].script
    assert ("install -d -o arches -g arches -m 0755 /opt/arches/venv" in script) == makes_dir
    assert "runuser -u arches -- env HOME=/home/arches python3 -m venv /opt/arches/venv" in script


def test_a_supervisord_run_as_root_is_moved_over_with_a_warm_restart():
    inventory = make_inventory()
    facts = deployed_facts()
    object.__setattr__(facts, "legacy_supervisord", True)
    object.__setattr__(facts, "supervisord_running", False)
    plan = steps(inventory, facts)["supervisord"]
    assert [a.summary for a in plan.actions] == [
        "move supervisord from root to arches: restart it (warm shutdown: running tasks finish first)"]
    assert plan.actions[0].script == "systemctl restart my_proj-supervisord.service"
    assert plan.actions[0].note == "supervisord moved from root to arches (warm restart)"
    # not under systemd: TERM to the pid root wrote in /run, wait until it is gone, start as the user
    object.__setattr__(facts, "systemd", False)
    script = steps(inventory, facts)["supervisord"].actions[-1].script
    assert script.startswith('kill -TERM "$(cat /run/my_proj-supervisord.pid)"\n')
    assert script.endswith(f"runuser -u arches -- {VENV}/bin/supervisord -c /etc/supervisor/my_proj-supervisord.conf")


def test_the_probe_reads_without_following_links_and_spots_a_root_supervisord(tmp_path):
    secret = tmp_path / "root-only"
    secret.write_text("root:secret\n")
    real, link = tmp_path / "settings_local.py", tmp_path / "settings_link.py"
    real.write_text("A = 1\n")
    link.symlink_to(secret)
    legacy = tmp_path / "legacy.pid"
    legacy.write_text(f"{os.getpid()}\n")
    spec = ProbeSpec(paths=(str(link),), user_contents=(str(real), str(link)), legacy_supervisord_pidfile=str(legacy),
                     supervisord_pidfile=str(tmp_path / "none.pid"))
    facts = parse_probe(subprocess.run(["sh", "-c", probe_script(spec)], capture_output=True, text=True,
                                       check=True).stdout)
    assert facts.contents[str(real)] == "A = 1\n"
    assert facts.contents.get(str(link)) in (None, "")           # never the link's target
    assert facts.paths[str(link)].kind == "link"
    assert facts.legacy_supervisord and not facts.supervisord_running


def run_root(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True)


def test_the_no_follow_installer_replaces_a_link_and_refuses_a_linked_directory(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "settings_local.py").symlink_to(secret)
    source = tmp_path / "upload"
    source.write_text("NEW = 1\n")
    done = run_root(install_nofollow(str(source), "root", "root", "0640", str(project / "settings_local.py")))
    assert done.returncode == 0, done.stderr
    target = project / "settings_local.py"
    assert not target.is_symlink() and target.read_text() == "NEW = 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert secret.read_text() == "root only\n" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert sorted(p.name for p in project.iterdir()) == ["settings_local.py"]
    # the directory itself a link: refused, nothing written there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "linked").symlink_to(elsewhere)
    done = run_root(install_nofollow(str(source), "root", "root", "0640", str(tmp_path / "linked" / "s.py")))
    assert done.returncode == 3 and "is a symbolic link" in done.stderr
    assert list(elsewhere.iterdir()) == []


def test_owner_and_mode_are_fixed_through_the_file_never_through_a_link(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    log = tmp_path / "worker.log"
    log.write_text("")
    log.chmod(0o644)
    done = run_root(set_owner_mode(str(log), "root", "root", "640", "file"))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    link = tmp_path / "beat.log"
    link.symlink_to(secret)
    done = run_root(set_owner_mode(str(link), "nobody", "nogroup", "666", "file"))
    assert done.returncode == 3 and f"{link}: is a symbolic link" in done.stderr
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.stat().st_uid == 0
    hard = tmp_path / "hard.log"
    os.link(secret, hard)
    done = run_root(set_owner_mode(str(hard), "nobody", "nogroup", "666", "file"))
    assert done.returncode == 3 and "hard links" in done.stderr and stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_text_from_a_server_cannot_drive_the_terminal():
    assert printable("ok \x1b]0;pwned\x07 \x1b[2J\r\x9b done\tx") == "ok \\x1b]0;pwned\\x07 \\x1b[2J\\x0d\\x9b done\tx"
    status = parse_status("celery  FATAL  Exited too quickly \x1b[31m\n")
    assert status[0].description == "Exited too quickly \\x1b[31m"


def test_fab_logs_escapes_control_characters(tmp_path, monkeypatch):
    fake = FakeHost(tmp_path, monkeypatch)
    (tmp_path / "worker.log").write_text("fine\n\x1b[2Jcleared\x1b]0;title\x07\n")
    outcome = fake.run(logs_operation(fake.target, 2))
    assert outcome.lines[1:3] == ["fine", "\\x1b[2Jcleared\\x1b]0;title\\x07"]
