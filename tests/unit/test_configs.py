"""Rendered files: what they say, and that supervisor's own parser loads them."""

import grp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.configs import (
    BEGIN_MARKER,
    END_MARKER,
    merge_managed_block,
    plan_configs,
    template_context,
)
from tasks.install import install_script
from tasks.layout import Layout
from tasks.rendering import TemplateError, render
from tasks.scripts import text
from tasks.target import Target

from .conftest import fresh_facts, make_inventory

VALIDATOR = text("validate_supervisor.py")


def rendered(inventory=None, group=None):
    inventory = inventory or make_inventory()
    host = inventory.hosts["prod"]
    target = Target.of(inventory, host)
    context = template_context(target, fresh_facts(), "/home/arches", "redis://localhost:6379/0",
                               "redis-server.service")
    if group:
        context["group"] = group
    plan = plan_configs(target, fresh_facts(), context)
    return {Path(u.target).name: u.content for a in plan.actions for u in a.uploads}


def test_worker_uses_the_celery5_argument_order_and_runs_as_the_project_user():
    conf = rendered()["my_proj-celeryd.conf"]
    assert ("command=/opt/arches/venv/bin/celery -A my_proj.celery worker --loglevel=INFO --concurrency=2 "
            "--hostname=celery@prod\n") in conf
    assert "user=arches\n" in conf
    assert "directory=/opt/arches/my_proj\n" in conf
    # the warm shutdown's 600 s, then 30 s for the cold one that hands tasks back (tasks/shutdown.py)
    assert "stopwaitsecs=630\n" in conf
    assert "stdout_logfile=/var/log/celery/my_proj-worker.log\n" in conf


def test_beat_keeps_its_schedule_and_pid_out_of_tmp():
    conf = rendered()["my_proj-celerybeat.conf"]
    assert ("command=/opt/arches/venv/bin/celery -A my_proj.celery beat --loglevel=INFO "
            "--schedule=/var/lib/celery/my_proj/celerybeat-schedule --pidfile=/run/my_proj-celery/celerybeat.pid"
            ) in conf
    assert "/tmp" not in conf


def test_supervisord_socket_is_private_and_there_is_no_tcp_port():
    conf = rendered()["my_proj-supervisord.conf"]
    # supervisord runs as the project user: its socket is that user's alone (and root's)
    assert "file=/run/my_proj-supervisor/supervisor.sock\nchmod=0700\n" in conf
    assert "chown=" not in conf and "user=" not in conf
    assert "inet_http_server" not in conf
    assert "files = /etc/supervisor/my_proj-programs.d/my_proj-*.conf" in conf


def test_systemd_unit_starts_this_projects_supervisord():
    unit = rendered()["my_proj-supervisord.service"]
    assert ("ExecStart=/opt/arches/venv/bin/supervisord --nodaemon --configuration "
            "/etc/supervisor/my_proj-supervisord.conf") in unit
    assert "After=network-online.target redis-server.service\n" in unit
    assert "KillMode=process" in unit and "TimeoutStopSec=690" in unit
    assert "WantedBy=multi-user.target" in unit


def test_settings_block_holds_the_broker_and_json_only():
    settings = rendered()["settings_local.py"]
    assert settings.startswith("SECRET_KEY = 'x'\n\n" + BEGIN_MARKER)
    assert "CELERY_BROKER_URL = 'redis://localhost:6379/0'\n" in settings
    assert 'CELERY_ACCEPT_CONTENT = ["json"]' in settings
    assert settings.rstrip().endswith(END_MARKER)


def test_managed_block_is_replaced_and_the_rest_is_untouched():
    original = "A = 1\n" + BEGIN_MARKER + "\nOLD = 2\n" + END_MARKER + "\nB = 3\n"
    merged = merge_managed_block(original, BEGIN_MARKER + "\nNEW = 4\n" + END_MARKER + "\n")
    assert merged == "A = 1\n" + BEGIN_MARKER + "\nNEW = 4\n" + END_MARKER + "\nB = 3\n"
    assert merge_managed_block(merged, BEGIN_MARKER + "\nNEW = 4\n" + END_MARKER + "\n") == merged


def test_managed_block_is_appended_to_a_file_without_one_and_creates_a_missing_file():
    block = BEGIN_MARKER + "\nX = 1\n" + END_MARKER + "\n"
    assert merge_managed_block("A = 1", block) == "A = 1\n\n" + block
    assert merge_managed_block(None, block) == block


def test_a_broken_template_names_the_template_and_line(tmp_path):
    (tmp_path / "bad.j2").write_text("line one\n{{ missing_value }}\n")
    with pytest.raises(TemplateError, match="bad.j2"):
        render("bad.j2", {}, tmp_path)
    (tmp_path / "syntax.j2").write_text("ok\n{% if %}\n")
    with pytest.raises(TemplateError, match="syntax.j2, line 2"):
        render("syntax.j2", {}, tmp_path)


def _validate(tmp_path, files: dict[str, str], main: str) -> subprocess.CompletedProcess:
    checks = []
    for name, content in files.items():
        path = tmp_path / name
        path.write_text(content)
        checks.append(f"{'main' if name == main else 'programs'}:{path}")
    return subprocess.run([sys.executable, "-c", VALIDATOR, *checks], capture_output=True, text=True)


def rendered_for_this_machine(tmp_path) -> dict[str, str]:
    """The parser checks that users, groups and log directories exist: use this machine's."""
    own_group = grp.getgrgid(os.getgid()).gr_name
    inventory = make_inventory(project__user="nobody")   # one that every machine has (root is refused)
    for directory in ("supervisor", "celery", "run/my_proj-supervisor", "run/my_proj-celery"):
        (tmp_path / directory).mkdir(parents=True)
    return {k: v.replace("/var/log/", f"{tmp_path}/").replace("/run/", f"{tmp_path}/run/")
            for k, v in rendered(inventory, group=own_group).items() if k.endswith(".conf")}


def test_rendered_supervisor_files_load_with_supervisors_own_parser(tmp_path):
    files = rendered_for_this_machine(tmp_path)
    assert len(files) == 3
    result = _validate(tmp_path, files, main="my_proj-supervisord.conf")
    assert result.returncode == 0, result.stderr


def test_supervisors_parser_rejects_a_broken_program_file(tmp_path):
    broken = rendered_for_this_machine(tmp_path)["my_proj-celeryd.conf"].replace("command=", "commandx=")
    result = _validate(tmp_path, {"my_proj-celeryd.conf": broken}, main="")
    assert result.returncode == 1
    assert "my_proj-celeryd.conf" in result.stderr and "command" in result.stderr


def test_install_script_validates_before_it_renames():
    from tasks.plan import Upload, Validator

    uploads = (Upload("/etc/supervisor/p-programs.d/p-celeryd.conf", "x", validate=Validator.PROGRAMS),
               Upload("/opt/p/p/settings_local.py", "y", "deploy", "arches", "0640", secret=True))
    script = install_script("/tmp/tmp.abc", uploads, Layout(make_inventory().project))
    lines = script.splitlines()
    assert lines[0] == "set -e"
    assert lines[1].startswith("trap 'rm -rf /tmp/tmp.abc /etc/supervisor/p-programs.d/.p-celeryd.conf.fabcelery-new")
    staged = "/etc/supervisor/p-programs.d/.p-celeryd.conf.fabcelery-new.abc"
    assert f"install -o root -g root -m 0644 /tmp/tmp.abc/0 {staged}" in lines
    assert "install -o deploy -g arches -m 0640 /tmp/tmp.abc/1 /opt/p/p/.settings_local.py.fabcelery-new.abc" in lines
    # supervisor's parser is the virtualenv's: run as the project user, not as root
    validate = script.index("runuser -u arches -- /opt/arches/venv/bin/python -c")
    first_move = script.index("\nmv -f")
    assert validate < first_move
    assert f" programs:{staged}; then" in script[validate:first_move]
    assert "settings_local" not in script[validate:first_move]


def test_the_renderer_imports_without_fabric():
    """bench/compare's pyinfra deploy renders with tasks.rendering in a virtualenv that has no
    Fabric: rendering must not pull in the SSH layer."""
    code = ("import sys; sys.modules['fabric'] = sys.modules['paramiko'] = sys.modules['invoke'] = None; "
            "from tasks.configs import merge_managed_block; from tasks.rendering import render")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
