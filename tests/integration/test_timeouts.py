"""The broker's timeouts follow from the pools (tasks/timeouts.py): a pool with `time_limit: 7200`
on Redis (Debian 12) and on RabbitMQ (Debian 13). The derived value is read back from the
server (Redis: the app as the worker loads it, as the project user in the virtualenv; RabbitMQ:
the running node's own setting) and is above the time limit; a second deploy changes nothing
over one SSH login; `--dry-run` shows a new derived value and changes nothing; an inventory
whose own value contradicts the pool's time limit is refused before any login, exit 2, naming
both keys.
"""

from __future__ import annotations

import json
import time

import pytest

from .conftest import Project, install_example_project, server
from .snapshots import start_deployed

TIME_LIMIT = 7200
DERIVED = 7920                 # 7200 + 10 %
CASES = {"redis": "bookworm", "rabbitmq": "trixie"}
SESSIONS = "journalctl -q -u ssh --no-pager | grep -c 'Accepted publickey' || true"
# the app as the worker loads it (its directory, the project user, the virtualenv's Python): its
# effective broker_transport_options (`celery inspect conf` shows only what was set on app.conf
# itself, not what the Django settings give)
APP_OPTIONS = ("cd /opt/arches/demo_proj && runuser -u arches -- env -i HOME=/home/arches USER=arches "
               "PATH=/usr/bin:/bin /opt/arches/venv/bin/python -c "
               "'import json; from demo_proj.celery import app; print(json.dumps(app.conf.broker_transport_options))'")
CONSUMER_TIMEOUT = "rabbitmqctl -q eval 'application:get_env(rabbit, consumer_timeout).'"


# the release in the id: the two sets of hosts are two units of work, deployed side by side
@pytest.fixture(scope="module", params=list(CASES), ids=[f"{kind}-{suite}" for kind, suite in CASES.items()])
def deployed(request, fleet, tmp_path_factory):
    kind = request.param
    name = f"to-{kind[:2]}"
    # from the snapshot of a deployed Redis or RabbitMQ host (what is tested is the deploy that sets
    # the timeouts, not the first one)
    host = start_deployed(fleet, name, suite=CASES[kind], kind="broker" if kind == "redis" else "rabbitmq")
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    project.data["broker"]["kind"] = kind
    project.data["celery"]["pools"] = {"celery": {"time_limit": TIME_LIMIT, "stopwaitsecs": TIME_LIMIT}}
    project.write()
    first = project.fab("deploy")
    yield {"kind": kind, "name": name, "host": host, "fleet": fleet, "project": project, "first": first,
           "server": server(fleet, host)}
    fleet.remove(host)


def sh(deployed, command: str) -> str:
    return deployed["fleet"].exec(deployed["host"], command).stdout.strip()


def read_back(deployed) -> int:
    """The timeout the server has: Redis, the app's effective broker_transport_options, loaded
    as the worker loads it; RabbitMQ, the running node's consumer_timeout (ms)."""
    if deployed["kind"] == "redis":
        return json.loads(sh(deployed, APP_OPTIONS).splitlines()[-1])["visibility_timeout"]
    answer = sh(deployed, CONSUMER_TIMEOUT)          # {ok,7920000}
    assert answer.startswith("{ok,") and answer.endswith("}"), answer
    return int(answer[4:-1]) // 1000


def test_the_derived_timeout_is_on_the_server_and_above_the_time_limit(deployed):
    assert deployed["first"].returncode == 0, deployed["first"].output
    seconds = read_back(deployed)
    assert seconds == DERIVED and seconds > TIME_LIMIT
    # the worker runs with that time limit
    conf = sh(deployed, "cat /etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf")
    assert f"--time-limit={TIME_LIMIT}" in conf


def test_a_second_deploy_changes_nothing_over_one_login(deployed):
    before = int(sh(deployed, SESSIONS))
    run = deployed["project"].fab("deploy")
    assert run.returncode == 0, run.output
    assert run.recap()[deployed["name"]]["changed"] == 0, run.output
    time.sleep(1)    # sshd's journal line of the login is there by now
    assert int(sh(deployed, SESSIONS)) == before + 1


def test_dry_run_shows_a_new_derived_value_and_changes_nothing(deployed):
    project = deployed["project"]
    project.data["celery"]["max_eta"] = 9000          # a countdown of 2.5 hours: 9000 + 900
    project.write()
    try:
        run = project.fab("deploy", "--dry-run")
    finally:
        del project.data["celery"]["max_eta"]
        project.write()
    assert run.returncode == 0, run.output
    shown = ('+CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": \'demo_proj:\', "visibility_timeout": 9900}'
             if deployed["kind"] == "redis" else "+consumer_timeout = 9900000")
    assert shown in run.output
    assert "celery.max_eta (9000 s) and a margin of 900 s" in run.output
    assert read_back(deployed) == DERIVED


def test_a_changed_need_reaches_the_running_broker_and_worker(deployed):
    """celery.max_eta longer than the time limit: the new value is applied (RabbitMQ restarted,
    the worker restarted), read back from the server, and a second deploy changes nothing."""
    project = deployed["project"]
    project.data["celery"]["max_eta"] = 9000
    project.write()
    try:
        run = project.fab("deploy")
        assert run.returncode == 0, run.output
        assert read_back(deployed) == 9900
        again = project.fab("deploy")
        assert again.returncode == 0 and again.recap()[deployed["name"]]["changed"] == 0, again.output
    finally:
        del project.data["celery"]["max_eta"]
        project.write()
    back = project.fab("deploy")
    assert back.returncode == 0, back.output
    assert read_back(deployed) == DERIVED


@pytest.mark.parametrize("given", [3600, TIME_LIMIT])
def test_a_value_below_the_time_limit_is_refused_before_any_login(deployed, given):
    project = deployed["project"]
    key = "visibility_timeout" if deployed["kind"] == "redis" else "consumer_timeout"
    before = sh(deployed, SESSIONS)
    project.data["broker"][key] = given
    project.write()
    try:
        run = project.fab("deploy")
    finally:
        del project.data["broker"][key]
        project.write()
    assert run.returncode == 2, run.output
    assert f"broker.{key}" in run.output and "celery.pools.celery.time_limit (7200 s)" in run.output
    assert "Traceback" not in run.output and "nothing was changed" in run.output
    time.sleep(1)
    assert sh(deployed, SESSIONS) == before
    assert read_back(deployed) == DERIVED
