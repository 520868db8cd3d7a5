"""Fleets: a broker host and worker hosts, exactly one beat; Redis with the project's account,
then RabbitMQ with its own vhost and user; and a single-host RabbitMQ deploy.

The fleet mixes Debian 13 (broker, app2) and Debian 12 (app1).
"""

from __future__ import annotations

import json

import pytest

from .conftest import Project, install_example_project, server

PASSWORD_FILE = "/var/lib/fabcelery/demo_proj/broker-password"
SETTINGS = "/opt/arches/demo_proj/demo_proj/settings_local.py"
CTL = ("runuser -u arches -- /opt/arches/venv/bin/supervisorctl"
       " -c /etc/supervisor/demo_proj-supervisord.conf")


def send_task(srv, *args: str) -> object:
    out = srv.check_output(
        "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python -m demo_proj.sendtask "
        + " ".join(args)
    )
    return json.loads(out.strip().splitlines()[-1])


def installed(srv, package: str) -> bool:
    return srv.run(f"dpkg-query -W -f='${{db:Status-Abbrev}}' {package} 2>/dev/null | grep -q '^ii'").rc == 0


@pytest.fixture(scope="module")
def fleet3(fleet, tmp_path_factory):
    mq = fleet.start("fl-mq", suite="trixie")
    app1 = fleet.start("fl-app1", suite="bookworm")
    app2 = fleet.start("fl-app2", suite="trixie")
    for host in (app1, app2):
        install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("fleet3"), {
        "fl-mq": {"roles": ["broker"], "internal_address": mq.internal_ip},
        "fl-app1": {"roles": ["worker", "beat"]},
        "fl-app2": {"roles": ["worker"]},
    })
    state = {
        "project": project,
        "mq": server(fleet, mq), "app1": server(fleet, app1), "app2": server(fleet, app2),
        "mq_ip": mq.internal_ip,
        "redis": project.fab("deploy"),
    }
    yield state
    for host in (mq, app1, app2):
        fleet.remove(host)


def test_redis_fleet_probes_all_hosts_at_once_and_changes_workers_after_the_broker_host(fleet3):
    run = fleet3["redis"]
    assert run.returncode == 0, run.output
    recap = run.recap()
    assert set(recap) == {"fl-mq", "fl-app1", "fl-app2"} and all(r["failed"] == 0 for r in recap.values())
    lines = run.output.splitlines()

    def first(host: str, text: str) -> int:
        return next(i for i, line in enumerate(lines) if line.split()[:1] == [host] and text in line)

    # all hosts connect and probe at once; a worker host changes nothing before the broker
    # host is done (here a broker-only host: its last step, verify, has nothing to wait for)
    assert first("fl-app1", "probe ") < first("fl-mq", "verify       ")
    assert first("fl-mq", "verify       ") < first("fl-app1", "system       ")
    assert first("fl-mq", "verify       ") < first("fl-app2", "system       ")


def test_the_broker_is_installed_only_on_the_broker_host(fleet3):
    assert installed(fleet3["mq"], "redis-server")
    assert not installed(fleet3["app1"], "redis-server") and not installed(fleet3["app2"], "redis-server")
    # and the broker host runs no celery programs
    assert not fleet3["mq"].file("/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf").exists


def test_redis_listens_on_the_internal_address_only_with_the_password(fleet3):
    mq, ip = fleet3["mq"], fleet3["mq_ip"]
    listeners = mq.check_output("ss -Hltn 'sport = :6379'")
    assert f"{ip}:6379" in listeners and "0.0.0.0:6379" not in listeners and "*:6379" not in listeners
    assert "NOAUTH" in mq.run(f"redis-cli -h {ip} ping").stdout
    account = f"REDISCLI_AUTH=\"$(cat {PASSWORD_FILE})\" redis-cli -h {ip} --user demo_proj"
    assert mq.check_output(f"{account} ping") == "PONG"


def test_the_password_is_kept_privately_and_never_shown(fleet3):
    kept = fleet3["mq"].file(PASSWORD_FILE)
    assert (kept.user, kept.group, kept.mode) == ("root", "root", 0o600)
    password = kept.content_string.strip()
    assert len(password) >= 24
    assert password not in fleet3["redis"].output
    for app in ("app1", "app2"):
        settings = fleet3[app].file(SETTINGS)
        assert settings.mode == 0o640 and settings.group == "arches"
        assert f"redis://demo_proj:{password}@{fleet3['mq_ip']}:6379/0" in settings.content_string


def test_a_task_sent_from_a_worker_host_is_executed_by_the_fleet(fleet3):
    assert send_task(fleet3["app2"], "add", "19", "23") == 42
    hosts = {send_task(fleet3["app2"], "whoami")["host"] for _ in range(8)}
    assert hosts <= {"fl-app1", "fl-app2"} and hosts


def test_beat_runs_on_exactly_one_host_and_its_schedule_fires(fleet3):
    assert "celerybeat" in fleet3["app1"].check_output(f"{CTL} status")
    assert "celerybeat" not in fleet3["app2"].check_output(f"{CTL} status || true")
    wait = "for i in $(seq 40); do [ -s /home/arches/heartbeat ] && exit 0; sleep 1; done; exit 1"
    # the heartbeat task is run by whichever worker takes it
    assert any(fleet3[app].run(wait if app == "app1" else "test -s /home/arches/heartbeat").rc == 0
               for app in ("app1", "app2"))


def test_second_redis_fleet_deploy_changes_nothing(fleet3):
    run = fleet3["project"].fab("deploy")
    assert run.returncode == 0, run.output
    assert {h: r["changed"] for h, r in run.recap().items()} == {"fl-mq": 0, "fl-app1": 0, "fl-app2": 0}


@pytest.fixture(scope="module")
def rabbit_fleet(fleet3):
    project = fleet3["project"]
    project.data["broker"]["kind"] = "rabbitmq"
    project.write()
    fleet3["rabbitmq"] = project.fab("deploy")
    return fleet3


def test_the_fleet_moves_to_rabbitmq(rabbit_fleet):
    run = rabbit_fleet["rabbitmq"]
    assert run.returncode == 0, run.output
    mq = rabbit_fleet["mq"]
    assert installed(mq, "rabbitmq-server")
    assert not installed(rabbit_fleet["app1"], "rabbitmq-server")
    assert not installed(rabbit_fleet["app2"], "rabbitmq-server")
    password = mq.file(PASSWORD_FILE).content_string.strip()
    assert password not in run.output
    url = f"amqp://demo_proj:{password}@{rabbit_fleet['mq_ip']}:5672/demo_proj"
    assert url in rabbit_fleet["app2"].file(SETTINGS).content_string


def test_rabbitmq_has_the_projects_vhost_and_user_and_no_guest(rabbit_fleet):
    mq = rabbit_fleet["mq"]
    users = mq.check_output("rabbitmqctl -q list_users").split()
    assert "demo_proj" in users and "guest" not in users
    assert "demo_proj" in mq.check_output("rabbitmqctl -q list_vhosts").split()
    listeners = mq.check_output("ss -Hltn 'sport = :5672'")
    assert f"{rabbit_fleet['mq_ip']}:5672" in listeners and "127.0.0.1:5672" in listeners
    assert "0.0.0.0:5672" not in listeners and "*:5672" not in listeners


def test_the_rabbitmq_broker_host_keeps_epmd_and_the_distribution_port_on_loopback(rabbit_fleet):
    # the workers on other hosts need AMQP only; a single node has no Erlang peers
    mq = rabbit_fleet["mq"]
    for port in (4369, 25672):
        listeners = {line.split()[3] for line in mq.check_output(f"ss -Hltn 'sport = :{port}'").splitlines()}
        assert listeners == {f"127.0.0.1:{port}"}, listeners
    assert "demo_proj" in mq.check_output("rabbitmqctl -q list_users").split()


def test_tasks_run_over_rabbitmq_and_a_second_deploy_is_quiet(rabbit_fleet):
    assert send_task(rabbit_fleet["app2"], "add", "1", "2") == 3
    assert send_task(rabbit_fleet["app1"], "add", "3", "4") == 7
    run = rabbit_fleet["project"].fab("deploy")
    assert run.returncode == 0, run.output
    assert all(r["changed"] == 0 for r in run.recap().values()), run.output


def test_single_host_rabbitmq_on_debian_12(fleet, tmp_path_factory):
    host = fleet.start("rmq12", suite="bookworm")
    try:
        install_example_project(fleet, host)
        project = Project(fleet, tmp_path_factory.mktemp("rmq12"), {"rmq12": {"roles": ["broker", "worker", "beat"]}})
        project.data["broker"]["kind"] = "rabbitmq"
        project.write()
        first = project.fab("-H", "rmq12", "deploy")
        assert first.returncode == 0, first.output
        srv = server(fleet, host)
        password = srv.file(PASSWORD_FILE).content_string.strip()
        assert password not in first.output
        users = srv.check_output("rabbitmqctl -q list_users").split()
        assert "demo_proj" in users and "guest" not in users
        assert srv.check_output("ss -Hltn 'sport = :5672'").split()[3] == "127.0.0.1:5672"
        assert send_task(srv, "add", "2", "2") == 4
        second = project.fab("-H", "rmq12", "deploy")
        assert second.recap()["rmq12"]["changed"] == 0, second.output
    finally:
        fleet.remove(host)
