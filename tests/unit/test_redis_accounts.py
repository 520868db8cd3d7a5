"""Redis with an account per project: facts in, actions out.

Each project gets an ACL user of its own (its password only as a hash in its own fragment
/etc/redis/fabcelery-NAME.conf), keys and channels under NAME:, an allow-list of commands;
redis.conf gets `user default off` and the project's include line; the old shared fragment
goes; a restart owed by a deploy that was cut off is made by the next one.
"""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tasks.apply import file_diff
from tasks.broker_host import needs_password
from tasks.configs import sha256
from tasks.deploy import plan_deploy, probe_spec
from tasks.install import install_script
from tasks.layout import Layout
from tasks.probe import probe_script
from tasks.redis_broker import (
    OLD_REDIS_FRAGMENT,
    OLD_REDIS_INCLUDE,
    OLD_REDIS_INCLUDE_COMMENT,
    REDIS_CONF,
    REDIS_DEFAULT_OFF,
    redis_fragment,
    redis_include,
    redis_restart_file,
)
from tasks.status import status_operation
from tasks.target import Target

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of

FLEET = {
    "mq1": {"roles": ["broker"], "internal_address": "10.0.0.5"},
    "app1": {"roles": ["worker", "beat"]},
}
FRAGMENT = "/etc/redis/fabcelery-my_proj.conf"
PENDING = "/var/lib/fabcelery/my_proj/pending-redis-restart"
SETTINGS = "/opt/arches/my_proj/my_proj/settings_local.py"
ACL = (f"user my_proj reset on #{sha256(PASSWORD)} resetkeys ~my_proj:* resetchannels &my_proj:* "
       "&my_proj:/0.celery.pidbox &my_proj:/0.celeryev/worker.* &my_proj:/0.celeryev/* "
       "-@all +@connection +@transaction +@keyspace +@string +@list +@hash +@set +@sortedset +@pubsub "
       "+evalsha +script|load +script|exists +time -scan -randomkey -pubsub -@admin -@dangerous\n")


def plans(inventory, facts, host="prod", password=PASSWORD):
    return {p.name: p for p in plan_deploy(target_of(inventory, host), facts, password)}


def summaries(plan):
    return [a.summary for a in plan.actions]


def fragment_of(inventory, host="prod"):
    broker = plans(inventory, fresh_facts(), host)["broker"]
    return next(u for a in broker.actions for u in a.uploads if u.target == redis_fragment(inventory))


# --- the fragment --------------------------------------------------------------------------------


@pytest.mark.parametrize("hosts,host,bind", [
    (None, "prod", None),                                             # local only: Debian's loopback bind stays
    (FLEET, "mq1", "bind 127.0.0.1 -::1 10.0.0.5\nprotected-mode yes\n"),   # workers elsewhere: also internal
])
def test_the_fragment_holds_the_projects_acl_user_and_binds_only_for_remote_workers(hosts, host, bind):
    inventory = make_inventory(**({"hosts": hosts} if hosts else {}))
    upload = fragment_of(inventory, host)
    text = upload.content
    assert upload.target == FRAGMENT == redis_fragment(inventory)
    assert (upload.owner, upload.group, upload.mode, upload.validate) == ("root", "redis", "0640", "redis")
    assert ACL in text                                  # exactly these rules, in this order
    assert PASSWORD not in text and "requirepass" not in text
    # Redis refuses a user declared twice in its config: `default` is turned off in redis.conf
    # (one line for all projects), never in a project's fragment
    assert "user default" not in text
    if bind:
        assert text.endswith(bind)
    else:
        assert "\nbind " not in text and "protected-mode" not in text


def test_the_acl_keeps_admin_and_dangerous_commands_out_after_every_grant():
    rules = ACL.split()
    assert rules.index("-@all") < rules.index("+@keyspace") < rules.index("-@admin") < rules.index("-@dangerous")
    assert rules[-2:] == ["-@admin", "-@dangerous"]    # last: they win over every category granted before
    assert not any(r.startswith("+@") and r[2:] in ("all", "admin", "dangerous", "scripting") for r in rules)
    assert "allkeys" not in rules and "allchannels" not in rules and "~*" not in rules and "nopass" not in rules


def test_a_password_needs_no_quoting_in_the_fragment():
    inventory = make_inventory()
    nasty = "p@ss w\"rd\\#~&"
    broker = plans(inventory, fresh_facts(), password=nasty)["broker"]
    text = next(u for a in broker.actions for u in a.uploads if u.target == FRAGMENT).content
    assert f" #{sha256(nasty)} " in text and nasty not in text


# --- the plan --------------------------------------------------------------------------------------


def broker_facts(inventory=None, **lines_and_more):
    """A deployed host, with its broker facts changed."""
    inventory = inventory or make_inventory()
    facts = deployed_facts(inventory)
    for key, value in lines_and_more.items():
        getattr(facts, key).update(value)
    return facts


def test_fresh_host_gets_password_fragment_default_off_include_and_a_restart_that_clears_the_record():
    broker = plans(make_inventory(), fresh_facts())["broker"]
    assert summaries(broker) == [
        "keep the broker password in /var/lib/fabcelery/my_proj/broker-password (0600, root)",
        f"install {FRAGMENT}",
        f"turn off Redis's passwordless default user (user default off in {REDIS_CONF})",
        f"include {FRAGMENT} at the end of {REDIS_CONF}",
        "restart and check redis-server.service",
    ]
    install, default_off, include, restart = broker.actions[1:]
    # the record is written after validation, before the fragment is renamed into place ...
    assert PENDING + ".new" in install.before_rename and install.before_rename.endswith(f"{PENDING}.new {PENDING}")
    # ... and before redis.conf changes
    for action in (default_off, include):
        assert action.quick and action.script.index(PENDING) < action.script.index(">> /etc/redis/redis.conf")
    assert "printf '\\n%s\\n%s\\n' '# Added by fabcelery: no passwordless" in default_off.script
    assert "'user default off' >> /etc/redis/redis.conf" in default_off.script
    assert f"'{redis_include(make_inventory())}' >> /etc/redis/redis.conf" in include.script
    # restarted, checked as the project's account, and only then the record removed
    script = restart.script
    assert script.startswith("set -e\nsystemctl enable --quiet redis-server.service\n"
                             "systemctl restart redis-server.service\n")
    assert script.index("redis-cli --user my_proj ping") < script.index(f"rm -f {PENDING}")
    assert script.endswith(f"rm -f {PENDING}")
    assert all(PASSWORD not in a.script and PASSWORD not in a.before_rename for a in broker.actions)


def test_the_record_is_written_by_the_install_script_between_validation_and_rename():
    install = plans(make_inventory(), fresh_facts())["broker"].actions[1]
    script = install_script("/tmp/fabcelery-upload.x", install.uploads, "/opt/arches/venv/bin/python",
                            install.before_rename)
    validated = script.index("redis-server rejects the new")
    recorded = script.index(f"> {PENDING}.new")
    renamed = script.index(f"mv -f /etc/redis/.fabcelery-my_proj.conf.fabcelery-new.x {FRAGMENT}")
    assert validated < recorded < renamed


@pytest.mark.parametrize("facts_change,expected", [
    # all in place: nothing to do, Redis is not restarted
    ({}, []),
    # the shared fragment of an earlier fabcelery, and its include line: removed, Redis restarted
    ({"checksums": {OLD_REDIS_FRAGMENT: "ab" * 32},
      "lines": {(REDIS_CONF, OLD_REDIS_INCLUDE): True, (REDIS_CONF, OLD_REDIS_INCLUDE_COMMENT): True}},
     [f"remove {OLD_REDIS_FRAGMENT} (one file for every project, from an earlier fabcelery) and its include line",
      "restart and check redis-server.service"]),
    # a deploy was cut off after the fragment was in place, before Redis restarted
    ({"contents": {PENDING: "restart redis-server: ...\n"}}, ["restart and check redis-server.service"]),
    # the fragment differs (e.g. a new password in the environment)
    ({"checksums": {FRAGMENT: "cd" * 32}}, [f"install {FRAGMENT}", "restart and check redis-server.service"]),
    # another project's deploy turned default off already; this project's include is missing
    ({"lines": {(REDIS_CONF, redis_include(make_inventory())): False}},
     [f"include {FRAGMENT} at the end of {REDIS_CONF}", "restart and check redis-server.service"]),
])
def test_broker_plan_from_the_facts(facts_change, expected):
    broker = plans(make_inventory(), broker_facts(**facts_change))["broker"]
    assert summaries(broker) == expected
    if not expected:
        assert broker.noop == "redis-server configured, enabled and running"


def test_the_old_shared_fragment_and_only_its_lines_are_removed_from_redis_conf():
    facts = broker_facts(checksums={OLD_REDIS_FRAGMENT: "ab" * 32}, lines={(REDIS_CONF, OLD_REDIS_INCLUDE): True})
    script = plans(make_inventory(), facts)["broker"].actions[0].script
    assert script.index(PENDING) < script.index("awk")
    assert f"FABCELERY_LINES='{OLD_REDIS_INCLUDE}' awk " in script
    assert " /etc/redis/redis.conf > /etc/redis/.redis.conf.fabcelery-new\n" in script
    assert "cp -p /etc/redis/redis.conf /etc/redis/.redis.conf.fabcelery-new" in script     # owner, mode kept
    assert script.endswith(f"mv -f /etc/redis/.redis.conf.fabcelery-new /etc/redis/redis.conf\nrm -f "
                           f"{OLD_REDIS_FRAGMENT}")


def test_old_lines_removed_from_a_real_file_keep_the_rest(tmp_path):
    from tasks.file_edits import remove_lines_script

    conf = tmp_path / "redis.conf"
    conf.write_text(f"bind 127.0.0.1 -::1\n\n{OLD_REDIS_INCLUDE_COMMENT}\n{OLD_REDIS_INCLUDE}\n"
                    f"{REDIS_DEFAULT_OFF}\ninclude /etc/redis/fabcelery-other.conf\n")
    conf.chmod(0o640)
    subprocess.run(["sh", "-ec", remove_lines_script(str(conf), [OLD_REDIS_INCLUDE, OLD_REDIS_INCLUDE_COMMENT])],
                   check=True)
    # the blank line that the earlier fabcelery wrote before its lines goes with them
    assert conf.read_text() == f"bind 127.0.0.1 -::1\n{REDIS_DEFAULT_OFF}\ninclude /etc/redis/fabcelery-other.conf\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis.conf"]


def test_a_redis_conf_that_declares_default_itself_is_refused_not_doubled(tmp_path):
    inventory = make_inventory()
    facts = broker_facts(lines={(REDIS_CONF, REDIS_DEFAULT_OFF): False})
    action = next(a for a in plans(inventory, facts)["broker"].actions if "default user" in a.summary)
    conf = tmp_path / "redis.conf"
    conf.write_text("user default on nopass ~* &* +@all\n")
    script = action.script.replace(REDIS_CONF, str(conf)).replace(PENDING, str(tmp_path / "pending"))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 1 and "declares Redis's default user itself" in done.stderr
    assert conf.read_text() == "user default on nopass ~* &* +@all\n"
    conf.write_text("bind 127.0.0.1 -::1\n")
    subprocess.run(["sh", "-ec", script], check=True)
    assert conf.read_text().endswith("\n# Added by fabcelery: no passwordless access; each project has an ACL user "
                                     "of its own (/etc/redis/fabcelery-*.conf).\nuser default off\n")


def test_without_systemd_redis_is_restarted_with_service():
    facts = broker_facts(contents={PENDING: "x\n"})
    object.__setattr__(facts, "systemd", False)
    script = plans(make_inventory(), facts)["broker"].actions[0].script
    assert script.startswith("set -e\nservice redis-server restart >/dev/null\n")
    assert script.endswith(f"rm -f {PENDING}")


def test_a_managed_redis_without_a_password_is_refused_before_anything_runs():
    steps = plan_deploy(target_of(make_inventory()), fresh_facts(), None)
    assert [s.name for s in steps] == ["broker"] and "no broker password" in steps[0].error


def test_a_single_host_needs_the_password_too_and_an_external_url_does_not():
    inventory = make_inventory()
    assert needs_password(inventory, inventory.hosts["prod"])
    external = make_inventory(broker__url="redis://mq.example:6379/0", hosts={"app": {"roles": ["worker", "beat"]}})
    assert not needs_password(external, None)


# --- settings_local.py -----------------------------------------------------------------------------


def settings_block(inventory, host="prod"):
    configs = plans(inventory, fresh_facts(), host)["configs"]
    return next(u.content for a in configs.actions for u in a.uploads if u.target == SETTINGS)


@pytest.mark.parametrize("changes,url,prefixed", [
    ({}, "redis://my_proj:s3cret@localhost:6379/0", True),
    ({"broker__kind": "rabbitmq"}, "amqp://my_proj:s3cret@127.0.0.1:5672/my_proj", False),
    ({"broker__url": "redis://mq.example:6379/0", "hosts": {"prod": {"roles": ["worker", "beat"]}}},
     "redis://:s3cret@mq.example:6379/0", False),         # not our Redis: no account, no prefix
])
def test_the_settings_block_prefixes_every_key_only_for_a_redis_we_manage(changes, url, prefixed):
    text = settings_block(make_inventory(**changes))
    assert f"CELERY_BROKER_URL = {url!r}\n" in text
    options = ("CELERY_BROKER_TRANSPORT_OPTIONS = {\"global_keyprefix\": 'my_proj:'}\n"
               "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {\"global_keyprefix\": 'my_proj:'}\n")
    assert (options in text) is prefixed
    if not prefixed:
        assert "global_keyprefix" not in text


def test_the_settings_block_is_python_with_the_options_kombu_reads():
    namespace: dict = {}
    exec(settings_block(make_inventory()), namespace)   # noqa: S102 - our own rendered template
    assert namespace["CELERY_BROKER_TRANSPORT_OPTIONS"] == {"global_keyprefix": "my_proj:"}
    assert namespace["CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS"] == {"global_keyprefix": "my_proj:"}


# --- what the probe, fab status and the broker step ask Redis ---------------------------------------


def test_the_probe_reads_what_the_plan_needs_in_its_one_command():
    inventory = make_inventory()
    spec = probe_spec(target_of(inventory))
    assert PENDING == redis_restart_file(inventory) and PENDING in spec.contents
    assert {FRAGMENT, OLD_REDIS_FRAGMENT} <= set(spec.checksums)
    assert {(REDIS_CONF, line) for line in (redis_include(inventory), REDIS_DEFAULT_OFF, OLD_REDIS_INCLUDE,
                                            OLD_REDIS_INCLUDE_COMMENT)} <= set(spec.lines)
    worker = make_inventory(hosts=FLEET)
    assert PENDING not in probe_spec(target_of(worker, "app1")).contents     # no Redis on a worker host


FAKE_REDIS_CLI = """#!/bin/sh
# records its arguments; answers as Redis would, whose account my_proj has the password $SERVER_PW
# (without a command: the commands come on stdin, one a line, each logged after a '<')
printf '%s\\n' "$*" >> "$LOG"
if [ $# -eq 2 ]; then commands=$(cat); printf '< %s\\n' $commands >> "$LOG"; else commands=$3; fi
if [ -z "${REDISCLI_AUTH+set}" ]; then echo "NOAUTH Authentication required."
elif [ "$1 $2" = "--user my_proj" ] && [ "$REDISCLI_AUTH" = "$SERVER_PW" ]; then
  printf '%s\\n' "$commands" | while read -r c _; do case $c in PING|ping) echo PONG ;; *) echo 0 ;; esac; done
else echo "WRONGPASS invalid username-password pair or user is disabled."; fi
"""


@pytest.fixture
def fake_redis(tmp_path, monkeypatch):
    """A redis-cli that says PONG only to the project's account with the right password."""
    bin_dir, state = tmp_path / "bin", tmp_path / "fabcelery"
    bin_dir.mkdir()
    state.mkdir()
    cli = bin_dir / "redis-cli"
    cli.write_text(FAKE_REDIS_CLI)
    cli.chmod(0o755)
    monkeypatch.setattr(Layout, "fabcelery_dir", property(lambda _: str(state)))
    log = tmp_path / "calls"
    log.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "SERVER_PW": "k3pt-pw"}
    env.pop("REDISCLI_AUTH", None)

    def run(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=60)

    return {"run": run, "password": state / "broker-password", "log": log}


def test_probe_status_and_wait_ping_as_the_account_with_the_password_from_the_file(fake_redis):
    from tasks.probe import parse_probe
    from tasks.status import status_facts

    inventory = make_inventory()
    host = inventory.hosts["prod"]
    fake_redis["password"].write_text("k3pt-pw")
    target = target_of(inventory)
    scripts = (probe_script(probe_spec(target)), status_operation(Target.of(inventory, host)).script,
               target.broker.wait_script())
    probe = parse_probe(fake_redis["run"](scripts[0]).stdout)
    status = status_facts(fake_redis["run"](scripts[1]).stdout)
    assert probe.redis_ping == "PONG" and status.redis_ping == "PONG"
    assert fake_redis["run"](scripts[2]).returncode == 0
    # each asked once, as the account; the password reached redis-cli only through REDISCLI_AUTH
    # (and the probe's survey of a default user not yet turned off pings without any: shared_redis.py)
    calls = fake_redis["log"].read_text().splitlines()
    assert calls.count("--user my_proj ping") == 2 and calls.count("--user my_proj") == 1
    # status: one redis-cli, its commands on stdin: PING, each queue's length, the unacked hash's,
    # then for the stall rule each queue's oldest message and the messages held
    status_call = calls.index("--user my_proj")
    assert calls[status_call + 1:status_call + 4] == ["< PING", "< LLEN", "< my_proj:celery"]
    assert set(calls) <= {"--user my_proj ping", "ping", "--user my_proj", "< PING", "< LLEN", "< HLEN",
                          "< my_proj:celery", "< my_proj:unacked", "< LINDEX", "< -1", "< HVALS"}
    assert not any("k3pt-pw" in script for script in scripts)


@pytest.mark.parametrize("kept,answer", [
    ("old-pw", "WRONGPASS invalid username-password pair or user is disabled."),
    (None, "NOAUTH Authentication required."),
])
def test_a_wait_that_gets_no_pong_tells_redis_answer_and_never_the_password(fake_redis, kept, answer):
    if kept:
        fake_redis["password"].write_text(kept)
    wait = target_of(make_inventory()).broker.wait_script()
    done = fake_redis["run"](wait.replace("sleep 0.25", "true"))   # its 60 tries, quickly
    assert done.returncode == 1
    assert done.stderr == f"redis-server does not answer redis-cli --user my_proj ping: {answer}\n"
    assert len(fake_redis["log"].read_text().splitlines()) == 60


# --- output ----------------------------------------------------------------------------------------


def test_the_dry_run_diff_of_the_fragment_masks_the_password_hash():
    upload = fragment_of(make_inventory())
    diff = file_diff(upload.target, None, upload.content, upload.secret)
    assert f"+{ACL.strip()}" not in diff and sha256(PASSWORD) not in diff
    assert "+user my_proj reset on #******** resetkeys ~my_proj:*" in diff


# --- kombu before 5.4 after a Redis restart (kombu#2007) ---------------------------------------------


CTL = "runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c /etc/supervisor/my_proj-supervisord.conf"
WHY = "(Redis restarted; kombu 5.3.7 may not resume consuming: kombu#2007)"


@pytest.mark.parametrize("kombu,extra,expected,script", [
    ("5.3.7", {}, [f"restart celery, celerybeat {WHY}"], f"{CTL} restart celery celerybeat"),
    ("5.4.0", {}, [], None),                  # fixed there: the worker reconnects by itself
    ("5.7.0", {}, [], None),
    # the worker's file changed too: update restarts it already, only beat is left
    ("5.3.7", {"celery__concurrency": 5}, ["reread and update (celery)", f"restart celerybeat {WHY}"],
     f"{CTL} restart celerybeat"),
])
def test_a_redis_restart_restarts_the_programs_of_a_kombu_that_may_not_resume(kombu, extra, expected, script):
    facts = broker_facts(make_inventory(), contents={PENDING: "x\n"})   # a restart owed
    facts.dists["kombu"] = kombu
    steps = plans(make_inventory(**extra), facts)
    assert summaries(steps["broker"]) == ["restart and check redis-server.service"]
    assert summaries(steps["supervisord"]) == expected
    if script:
        assert steps["supervisord"].actions[-1].script == script


def test_without_a_redis_restart_no_program_is_restarted_for_kombu():
    facts = broker_facts()
    facts.dists["kombu"] = "5.3.7"
    assert not plans(make_inventory(), facts)["supervisord"].changed
