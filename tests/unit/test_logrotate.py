"""Log rotation: /etc/logrotate.d/fabcelery-NAME lists every log fabcelery makes, recreates
them as the project user's, and has supervisord reopen them (signalled as that user)."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tasks.configs import plan_configs, template_context
from tasks.deploy import plan_deploy
from tasks.install import install_script, logrotate_check
from tasks.layout import Layout, stage_path
from tasks.plan import Upload, Validator
from tasks.target import Target

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of

TARGET = "/etc/logrotate.d/fabcelery-my_proj"
FLEET = {"mq": {"roles": ["broker"], "internal_address": "10.0.0.5"},
         "app1": {"roles": ["worker", "beat"]}, "app2": {"roles": ["worker"]}}


def rendered(inventory, host="prod") -> str | None:
    spec = inventory.hosts[host]
    target = Target.of(inventory, spec)
    context = template_context(target, fresh_facts(), "/home/arches", "redis://localhost:6379/0", None)
    plan = plan_configs(target, fresh_facts(), context)
    return {u.target: u.content for a in plan.actions for u in a.uploads}.get(TARGET)


def files_listed(text: str) -> list[str]:
    return [line for line in text.split("{")[0].splitlines() if line.startswith("/")]


def test_every_log_of_the_host_is_rotated_by_size_and_recreated_as_the_project_users():
    text = rendered(make_inventory())
    assert files_listed(text) == ["/var/log/supervisor/my_proj-supervisord.log", "/var/log/celery/my_proj-worker.log",
                                  "/var/log/celery/my_proj-beat.log"]
    body = [line.strip() for line in text.split("{", 1)[1].splitlines()]
    for directive in ("su root root", "size 100M", "rotate 14", "compress", "delaycompress", "missingok",
                      "notifempty", "create 0640 arches arches", "sharedscripts", "postrotate", "endscript"):
        assert directive in body, directive
    assert "copytruncate" not in text          # supervisord reopens: no lines lost between copy and truncate


def test_size_and_keep_come_from_the_inventory_and_the_group_too():
    text = rendered(make_inventory(logs={"rotate": {"size": "20M", "keep": 3}}, project__group="www-data"))
    body = [line.strip() for line in text.split("{", 1)[1].splitlines()]
    assert "size 20M" in body and "rotate 3" in body and "create 0640 arches www-data" in body


def test_a_worker_host_rotates_its_worker_log_and_a_broker_only_host_gets_no_file():
    inventory = make_inventory(hosts=FLEET)
    assert files_listed(rendered(inventory, "app2")) == ["/var/log/supervisor/my_proj-supervisord.log",
                                                         "/var/log/celery/my_proj-worker.log"]
    assert rendered(inventory, "mq") is None


def postrotate(text: str) -> str:
    return text.split("postrotate\n", 1)[1].split("endscript", 1)[0]


@pytest.fixture
def fake_runuser(tmp_path, monkeypatch):
    """runuser that records its arguments; the pid file in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runuser = bin_dir / "runuser"
    runuser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/runuser-args\n')
    runuser.chmod(runuser.stat().st_mode | stat.S_IXUSR)
    pidfile = tmp_path / "supervisord.pid"
    monkeypatch.setattr(Layout, "supervisord_pid", property(lambda _: str(pidfile)))
    return {"dir": tmp_path, "pidfile": pidfile, "env": {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}}


def test_postrotate_signals_supervisord_as_the_project_user_never_as_root(fake_runuser):
    script = postrotate(rendered(make_inventory()))
    fake_runuser["pidfile"].write_text("4242\n")
    done = subprocess.run(["sh", "-c", script], env=fake_runuser["env"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # SIGUSR2: supervisord reopens its log and every program's log; sent with arches's rights only
    assert (fake_runuser["dir"] / "runuser-args").read_text().splitlines() == \
        ["-u", "arches", "--", "/bin/sh", "-c", 'kill -USR2 "$1"', "sh", "4242"]


@pytest.mark.parametrize("content", ["", "1 2\n", "$(touch /tmp/x)\n", "-1\n"])
def test_postrotate_sends_nothing_for_a_pid_file_that_holds_no_pid(fake_runuser, content):
    script = postrotate(rendered(make_inventory()))
    fake_runuser["pidfile"].write_text(content)
    done = subprocess.run(["sh", "-c", script], env=fake_runuser["env"], capture_output=True, text=True)
    assert done.returncode == 0
    assert not (fake_runuser["dir"] / "runuser-args").exists()


def test_postrotate_follows_no_link_in_place_of_the_pid_file(fake_runuser, tmp_path):
    (tmp_path / "elsewhere").write_text("1\n")
    fake_runuser["pidfile"].symlink_to(tmp_path / "elsewhere")
    subprocess.run(["sh", "-c", postrotate(rendered(make_inventory()))], env=fake_runuser["env"], check=True)
    assert not (fake_runuser["dir"] / "runuser-args").exists()


def test_the_file_is_checked_by_logrotate_and_staged_outside_logrotate_d():
    upload = Upload(TARGET, "x", validate=Validator.LOGROTATE)
    script = install_script("/tmp/fabcelery-upload.abc", (upload,), Layout(make_inventory().project))
    # logrotate reads hidden files of /etc/logrotate.d too: the staged copy lies in /etc
    assert stage_path(TARGET, "abc") == "/etc/.fabcelery-my_proj.fabcelery-new.abc"
    assert stage_path("/etc/supervisor/conf.d/x.conf", "abc") == "/etc/supervisor/conf.d/.x.conf.fabcelery-new.abc"
    check = script.index("logrotate -d -s /dev/null /etc/.fabcelery-my_proj.fabcelery-new.abc")
    assert check < script.index(f"mv -f /etc/.fabcelery-my_proj.fabcelery-new.abc {TARGET}")


@pytest.mark.parametrize("output,rc,accepted", [
    ("reading config file x\nHandling 1 logs\n", 0, True),
    ("warning: x:13 unknown option 'sizee' -- ignoring line\n", 0, False),   # logrotate exits 0 here
    ("error: x:5 missing '{' after log files definition\n", 1, False),
])
def test_logrotate_check_refuses_errors_and_unknown_options(tmp_path, output, rc, accepted):
    fake = tmp_path / "logrotate"
    fake.write_text(f"#!/bin/sh\nprintf '%s' {output!r}\nexit {rc}\n")
    fake.chmod(0o755)
    done = subprocess.run(["sh", "-c", logrotate_check(str(tmp_path / "staged"))], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert (done.returncode == 0) is accepted
    if not accepted:
        assert output.strip() in done.stderr


def test_an_existing_deployment_gets_only_logrotate_and_its_file_and_nothing_restarts():
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    del facts.checksums[TARGET]                     # deployed by the version before rotation
    facts.packages["logrotate"] = False
    plans = {p.name: p for p in plan_deploy(target_of(inventory), facts, PASSWORD)}
    assert [a.summary for a in plans["system"].actions] == ["install logrotate"]
    assert [u.target for a in plans["configs"].actions for u in a.uploads] == [TARGET]
    assert plans["configs"].configs.changed_programs == ()
    assert not plans["supervisord"].changed
    assert not plans["broker"].changed and not plans["python"].changed

