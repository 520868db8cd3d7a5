"""A single RabbitMQ host (broker, worker, beat): epmd (4369), the Erlang distribution port
(25672) and AMQP (5672) listen on loopback only, the CLI tools and the worker still work,
also after a reboot. Once on Debian 12 (RabbitMQ 3.10) and once on Debian 13 (4.0).
"""

from __future__ import annotations

import json
import time

import pytest

from .conftest import SUITES, Project, install_example_project, server

PORTS = (4369, 25672, 5672)
LOOPBACK = {"127.0.0.1", "[::1]"}
CTL = "/opt/arches/venv/bin/supervisorctl -c /etc/supervisor/demo_proj-supervisord.conf"


@pytest.fixture(scope="module", params=list(SUITES))
def rabbit(request, fleet, tmp_path_factory):
    suite = request.param
    name = f"rl{SUITES[suite][-2:]}"
    host = fleet.start(name, suite=suite)
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    project.data["broker"]["kind"] = "rabbitmq"
    project.write()
    first = project.fab("-H", name, "deploy")
    yield {"name": name, "host": host, "fleet": fleet, "project": project, "first": first,
           "server": server(fleet, host)}
    fleet.remove(host)


def listeners(srv, port: int) -> set[str]:
    """The local addresses that listen on this TCP port, as ss prints them (127.0.0.1, [::1], *, ...)."""
    out = srv.check_output(f"ss -Hltn 'sport = :{port}'")
    return {line.split()[3].rpartition(":")[0] for line in out.splitlines() if line.strip()}


def assert_loopback_only(rabbit) -> None:
    srv, bridge = rabbit["server"], rabbit["host"].internal_ip
    for port in PORTS:
        found = listeners(srv, port)
        assert found, f"nothing listens on {port}"
        assert found <= LOOPBACK, f"port {port} listens on {found}"
        assert bridge not in found and not {"*", "0.0.0.0", "[::]"} & found


def send_task(srv, *args: str) -> object:
    out = srv.check_output(
        "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python -m demo_proj.sendtask "
        + " ".join(args)
    )
    return json.loads(out.strip().splitlines()[-1])


def test_the_first_deploy_succeeds(rabbit):
    assert rabbit["first"].returncode == 0, rabbit["first"].output
    assert rabbit["first"].recap()[rabbit["name"]]["failed"] == 0


def test_epmd_distribution_and_amqp_listen_on_loopback_only(rabbit):
    assert_loopback_only(rabbit)
    srv = rabbit["server"]
    # epmd is still systemd's socket (from erlang-base), with fabcelery's drop-in
    assert srv.check_output("systemctl show -p Listen --value epmd.socket") == "127.0.0.1:4369 (Stream)"
    assert srv.service("epmd.socket").is_running


def test_the_cli_tools_reach_the_node_and_the_account_is_there(rabbit):
    srv = rabbit["server"]
    users = srv.check_output("rabbitmqctl list_users").split()
    assert "demo_proj" in users and "guest" not in users
    assert srv.run("rabbitmq-diagnostics -q ping").rc == 0
    # a CLI tool is an Erlang node too, with a distribution listener of its own while it runs
    # (it takes seconds to start on a loaded machine: look until it listens, bounded)
    out = srv.check_output("rabbitmqctl -q eval 'timer:sleep(40000).' >/dev/null & cli=$!; "
                           "for i in $(seq 60); do out=$(ss -Hltn '( sport >= :35672 and sport <= :35682 )'); "
                           '[ -n "$out" ] && break; sleep 0.5; done; printf "%s\\n" "$out"; '
                           "kill $cli 2>/dev/null; wait; true")
    cli = {line.split()[3].rpartition(":")[0] for line in out.splitlines() if line.strip()}
    assert cli == {"127.0.0.1"}, out


def test_debians_rabbitmq_env_conf_keeps_its_lines_and_gains_one(rabbit):
    text = rabbit["server"].file("/etc/rabbitmq/rabbitmq-env.conf").content_string
    assert "#NODE_PORT=5672" in text   # Debian's own lines are still there
    assert text.rstrip("\n").endswith(
        "if [ -f /etc/rabbitmq/fabcelery-env.conf ]; then . /etc/rabbitmq/fabcelery-env.conf; fi")
    assert text.count("fabcelery-env.conf; fi") == 1


def test_a_task_sent_with_the_projects_app_runs(rabbit):
    assert send_task(rabbit["server"], "add", "2", "3") == 5


def test_a_second_deploy_changes_nothing(rabbit):
    run = rabbit["project"].fab("-H", rabbit["name"], "deploy")
    assert run.returncode == 0, run.output
    assert run.recap()[rabbit["name"]]["changed"] == 0, run.output


def test_after_a_reboot_the_ports_are_still_loopback_only_and_the_worker_runs(rabbit):
    rabbit["fleet"].restart(rabbit["host"])
    srv = rabbit["server"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = srv.run(f"{CTL} status").stdout
        if srv.run("rabbitmq-diagnostics -q ping").rc == 0 and "celery " in status and "RUNNING" in status:
            break
        time.sleep(2)
    assert srv.run("rabbitmq-diagnostics -q ping").rc == 0
    assert_loopback_only(rabbit)
    assert "demo_proj" in srv.check_output("rabbitmqctl -q list_users").split()
    assert send_task(srv, "add", "20", "22") == 42
