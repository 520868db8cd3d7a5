"""`fab undeploy`: a deployed fleet taken back to what it was before fabcelery, on real hosts.

A Redis fleet (broker host on Debian 12, bare; worker and beat host on Debian 13, from the
snapshot of a deployed worker, tests/integration/snapshots.py) and a single RabbitMQ host
(Debian 13, bare, undeployed with --purge). Each: deploy, `undeploy
--dry-run` (nothing changes), `undeploy` (none of fabcelery's files, units, programs or
accounts are left; the project's code and the rest of settings_local.py are intact), a
second undeploy (`changed=0`), and a deploy again to a working fleet.
"""

from __future__ import annotations

import pytest

from .conftest import Project, install_example_project, server
from .snapshots import start_deployed
from .test_fleet import SETTINGS, installed, send_task

PROJECT_CODE = "/opt/arches/demo_proj"
# what a user's settings_local.py holds before fabcelery adds its block
USER_SETTINGS = "SECRET_KEY = 'kept by the project'\nDEBUG = False\n"
# every place where a deploy leaves something of the project's (and what must not be left)
FOOTPRINT = ("ls -d /etc/supervisor/demo_proj-* /etc/supervisor/conf.d/demo_proj-* "
             "/etc/logrotate.d/fabcelery-demo_proj "
             "/etc/systemd/system/demo_proj-* /var/lib/fabcelery/demo_proj /var/log/celery/demo_proj-* "
             "/var/log/supervisor/demo_proj-* /run/demo_proj-* /var/lib/celery/demo_proj "
             "/etc/redis/fabcelery-demo_proj.conf /etc/rabbitmq/conf.d/50-fabcelery.conf "
             "/etc/rabbitmq/fabcelery-env.conf /etc/rabbitmq/fabcelery.inetrc "
             "/etc/systemd/system/epmd.socket.d/fabcelery.conf 2>/dev/null; true")


def footprint(srv) -> list[str]:
    return sorted(srv.check_output(FOOTPRINT).split())


def code_digest(srv) -> str:
    # the project's code, settings_local.py aside (its block comes and goes)
    return srv.check_output(f"cd {PROJECT_CODE} && find . -type f ! -name settings_local.py ! -path '*/__pycache__/*'"
                            " -print0 | sort -z | xargs -0 sha256sum | sha256sum")


def fabcelery_processes(srv) -> str:
    return srv.check_output("pgrep -a -u arches -f 'supervisord|celery' || true")


def put_user_settings(fleet, host) -> None:
    fleet.exec(host, f"cat > {SETTINGS}", input=USER_SETTINGS)


@pytest.fixture(scope="module")
def redis_fleet(fleet, tmp_path_factory):
    """The broker host bare (a broker-only host has no snapshot); the worker and beat host from the
    snapshot of a deployed worker, its settings_local.py the user's again (the deploy adds the block)."""
    mq = fleet.start("ud-mq", suite="bookworm")
    app = start_deployed(fleet, "ud-app", suite="trixie", kind="worker")
    install_example_project(fleet, app)
    put_user_settings(fleet, app)
    project = Project(fleet, tmp_path_factory.mktemp("undeploy-redis"), {
        "ud-mq": {"roles": ["broker"], "internal_address": mq.internal_ip},
        "ud-app": {"roles": ["worker", "beat"]},
    })
    state = {"project": project, "mq": server(fleet, mq), "app": server(fleet, app), "mq_ip": mq.internal_ip}
    state["mq before"] = footprint(state["mq"])
    state["code"] = code_digest(state["app"])
    state["deploy"] = project.fab("deploy")
    yield state
    for host in (mq, app):
        fleet.remove(host)


def test_the_redis_fleet_is_deployed_and_works(redis_fleet):
    assert redis_fleet["deploy"].returncode == 0, redis_fleet["deploy"].output
    assert send_task(redis_fleet["app"], "add", "2", "3") == 5
    assert footprint(redis_fleet["app"]) and footprint(redis_fleet["mq"])


def test_undeploy_dry_run_shows_what_would_go_and_changes_nothing(redis_fleet):
    app, mq = redis_fleet["app"], redis_fleet["mq"]
    before = {"app": footprint(app), "mq": footprint(mq), "settings": app.file(SETTINGS).content_string,
              "processes": fabcelery_processes(app)}
    run = redis_fleet["project"].fab("undeploy", "--dry-run")
    assert run.returncode == 0, run.output
    assert "dry run: nothing will be changed" in run.output
    assert "would stop and remove demo_proj-supervisord.service" in run.output
    assert "would remove fabcelery's block from " + SETTINGS in run.output
    assert "would remove /etc/redis/fabcelery-demo_proj.conf" in run.output
    after = {"app": footprint(app), "mq": footprint(mq), "settings": app.file(SETTINGS).content_string,
             "processes": fabcelery_processes(app)}
    assert after == before
    password = mq.file("/var/lib/fabcelery/demo_proj/broker-password").content_string.strip()
    assert password not in run.output


def test_undeploy_removes_every_file_unit_program_and_account_of_fabcelerys(redis_fleet):
    app, mq = redis_fleet["app"], redis_fleet["mq"]
    password = mq.file("/var/lib/fabcelery/demo_proj/broker-password").content_string.strip()
    # links the project user planted in its directories, to a directory of root's: never followed
    app.check_output("install -d -m 0700 /root/canary && touch /root/canary/kept")
    for directory in ("/run/demo_proj-celery", "/var/lib/celery/demo_proj"):
        app.check_output(f"runuser -u arches -- ln -s /root/canary {directory}/planted")
    run = redis_fleet["undeploy"] = redis_fleet["project"].fab("undeploy")
    assert run.returncode == 0, run.output
    assert password not in run.output
    recap = run.recap()
    assert recap["ud-app"]["changed"] > 0 and recap["ud-mq"]["changed"] > 0, run.output
    # the worker host first: its programs are stopped before the account they use goes
    lines = run.output.splitlines()
    last_app = max(i for i, line in enumerate(lines) if line.startswith("ud-app ") and " changed (" in line)
    first_mq_change = min(i for i, line in enumerate(lines) if line.startswith("ud-mq ") and "remove" in line)
    assert last_app < first_mq_change
    assert footprint(app) == []
    assert footprint(mq) == redis_fleet["mq before"] == []
    assert fabcelery_processes(app) == ""
    assert app.file("/root/canary/kept").exists
    assert app.run("systemctl cat demo_proj-supervisord.service").rc != 0
    # the project's code and its own settings are as they were
    assert app.file(SETTINGS).content_string == USER_SETTINGS
    assert code_digest(app) == redis_fleet["code"]
    assert app.file("/opt/arches/venv/bin/celery").exists        # no --purge: the virtualenv stays
    # Redis runs on, without the project's account, and redis.conf is the package's again
    assert mq.service("redis-server").is_running
    # (redis-cli goes on as the default user when its AUTH fails: ask who it is)
    auth = mq.run(f"REDISCLI_AUTH={password} redis-cli --user demo_proj acl whoami")
    assert "WRONGPASS" in auth.stdout + auth.stderr and "demo_proj" not in auth.stdout, auth
    conf = mq.file("/etc/redis/redis.conf").content_string
    assert "fabcelery" not in conf and "user default off" not in conf
    # byte for byte: the md5 that dpkg recorded for the package's conffile
    package_md5 = mq.check_output("dpkg-query -W -f='${Conffiles}' redis-server | awk '$1 == \"/etc/redis/redis.conf\""
                                  " {print $2}'")
    assert mq.check_output("md5sum /etc/redis/redis.conf").split()[0] == package_md5
    assert installed(mq, "redis-server")                         # no --purge: the packages stay


@pytest.fixture
def undeployed(redis_fleet):
    """The fleet after `fab undeploy`: the undeploy test's, or (when a test runs alone) one run now."""
    if "undeploy" not in redis_fleet:
        redis_fleet["undeploy"] = redis_fleet["project"].fab("undeploy")
    assert redis_fleet["undeploy"].returncode == 0, redis_fleet["undeploy"].output
    return redis_fleet


def test_a_second_undeploy_changes_nothing(undeployed):
    redis_fleet = undeployed
    run = redis_fleet["project"].fab("undeploy")
    assert run.returncode == 0, run.output
    assert {h: r["changed"] for h, r in run.recap().items()} == {"ud-mq": 0, "ud-app": 0}, run.output


def test_a_deploy_after_undeploy_gives_a_working_fleet_again(undeployed):
    redis_fleet = undeployed
    run = redis_fleet["project"].fab("deploy")
    assert run.returncode == 0, run.output
    assert send_task(redis_fleet["app"], "add", "20", "22") == 42
    settings = redis_fleet["app"].file(SETTINGS).content_string
    assert settings.startswith(USER_SETTINGS) and "CELERY_BROKER_URL" in settings


@pytest.fixture(scope="module")
def rabbit_host(fleet, tmp_path_factory):
    host = fleet.start("ud-rabbit", suite="trixie")
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("undeploy-rabbit"),
                      {"ud-rabbit": {"roles": ["broker", "worker", "beat"]}})
    project.data["broker"]["kind"] = "rabbitmq"
    project.write()
    srv = server(fleet, host)
    state = {"project": project, "srv": srv, "code": code_digest(srv),
             "env_conf": srv.run("cat /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null").stdout}
    state["deploy"] = project.fab("deploy")
    yield state
    fleet.remove(host)


def test_rabbitmq_undeploy_with_purge_takes_the_packages_and_the_virtualenv_it_made(rabbit_host):
    srv = rabbit_host["srv"]
    assert rabbit_host["deploy"].returncode == 0, rabbit_host["deploy"].output
    assert send_task(srv, "add", "1", "1") == 2
    assert installed(srv, "rabbitmq-server") and srv.file("/opt/arches/venv").is_directory
    dry = rabbit_host["project"].fab("undeploy", "--purge", "--dry-run")
    assert dry.returncode == 0, dry.output
    assert "would delete RabbitMQ vhost demo_proj" in dry.output and "would purge " in dry.output
    assert installed(srv, "rabbitmq-server") and "demo_proj" in srv.check_output("rabbitmqctl -q list_users")
    run = rabbit_host["purge"] = rabbit_host["project"].fab("undeploy", "--purge")
    assert run.returncode == 0, run.output
    assert footprint(srv) == []
    for package in ("rabbitmq-server", "python3-venv", "logrotate"):
        assert not installed(srv, package), package
    assert not srv.file("/opt/arches/venv").exists                # fabcelery created it
    assert code_digest(srv) == rabbit_host["code"]
    assert fabcelery_processes(srv) == ""
    assert srv.run("pgrep -x beam.smp").rc != 0                   # RabbitMQ went with its package
    again = rabbit_host["project"].fab("undeploy", "--purge")
    assert again.returncode == 0 and again.recap()["ud-rabbit"]["changed"] == 0, again.output


@pytest.fixture
def purged(rabbit_host):
    """The host after `fab undeploy --purge`: the purge test's, or (when a test runs alone) one run now."""
    if "purge" not in rabbit_host:
        rabbit_host["purge"] = rabbit_host["project"].fab("undeploy", "--purge")
    assert rabbit_host["purge"].returncode == 0, rabbit_host["purge"].output
    return rabbit_host


def test_rabbitmq_deploy_after_purge_works_again(purged):
    rabbit_host = purged
    run = rabbit_host["project"].fab("deploy")
    assert run.returncode == 0, run.output
    assert send_task(rabbit_host["srv"], "add", "4", "5") == 9
    users = rabbit_host["srv"].check_output("rabbitmqctl -q list_users").split()
    assert "demo_proj" in users and "guest" not in users
