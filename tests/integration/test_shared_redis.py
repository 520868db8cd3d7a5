"""A Redis that already serves another application is never broken silently (issue 24).

Redis is installed before the first deploy, and another application uses it through the
passwordless default user: its keys in db 1, and a client that holds a connection (a
SUBSCRIBE). The deploy stops that host before anything on it changes, naming what it found
and the inventory setting that accepts it; with the other application's client gone, it
stops again for its keys alone (the probe's own connection is not counted); with
`broker.redis_default_user: off-anyway` it deploys, the other application then gets
NOAUTH (as the message says), and a second deploy changes nothing.

Runs once on Debian 12 (Redis 7.0) and once on Debian 13 (Redis 8.0); the tests share one
host per release and run in order. On a second Debian 13 host, with no keys and no clients:
an ACL user that fabcelery did not make stops the deploy too, and so does a requirepass.
"""

from __future__ import annotations

import re

import pytest

from .conftest import SUITES, Project, install_example_project, server, wait_for

OTHER_KEYS = {"shop:cart:1": "cart-value-1", "shop:cart:2": "cart-value-2", "sessions": "session-value"}
# the other application's client, held open (its pid printed)
SUBSCRIBER = "setsid redis-cli -n 1 SUBSCRIBE shop-events >/dev/null 2>&1 < /dev/null & echo $!"
SETTING = "`broker: {redis_default_user: off-anyway}`"
# what a refused deploy must not have touched: files, packages, users, Redis's own state
UNTOUCHED = ("sha256sum /etc/redis/redis.conf /var/lib/dpkg/status; ls -A /etc/redis; "
             "getent passwd arches || echo no-arches; ls -d /opt/arches/venv /var/lib/fabcelery /etc/supervisor "
             "2>&1 | sed 's/^ls: //'; systemctl show -p MainPID --value redis-server; redis-cli ACL USERS")


@pytest.fixture(scope="module", params=list(SUITES))
def shared(request, fleet, tmp_path_factory):
    suite = request.param
    name = {"bookworm": "shr12", "trixie": "shr13"}[suite]
    host = fleet.start(name, suite=suite)
    install_example_project(fleet, host)
    fleet.exec(host, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server "
                     ">/dev/null", timeout=600)
    for key, value in OTHER_KEYS.items():
        fleet.exec(host, f"redis-cli -n 1 SET {key} {value} >/dev/null")
    subscriber = fleet.exec(host, SUBSCRIBER).stdout.strip()
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    state = {"name": name, "host": host, "fleet": fleet, "project": project, "server": server(fleet, host),
             "subscriber": subscriber}
    assert wait_for(lambda: len(subscribers(state)) == 1, 10), "the other application's client did not connect"
    yield state
    fleet.remove(host)


def sh(state, command: str, check: bool = True) -> str:
    return state["fleet"].exec(state["host"], command, check=check).stdout.strip()


def subscribers(state) -> list[str]:
    """The addresses of the clients subscribed as the default user (the other application's)."""
    out = sh(state, "redis-cli CLIENT LIST", check=False)
    return [re.search(r"\baddr=(\S+)", line)[1] for line in out.splitlines()
            if " user=default" in line and "cmd=subscribe" in line]


def refusal(run, name: str) -> str:
    found = re.search(rf"^{name}\s+preflight\s+failed: (.*)$", run.output, re.M)
    assert found, run.output
    return found[1]


def test_the_deploy_stops_naming_the_keys_the_client_and_the_setting_and_changes_nothing(shared):
    name = shared["name"]
    before = sh(shared, UNTOUCHED)
    client = subscribers(shared)[0]
    run = shared["project"].fab("-H", name, "deploy")
    assert run.returncode == 1, run.output
    assert run.recap()[name]["failed"] == 1
    line = refusal(run, name)
    assert "Redis on this host serves others besides fabcelery's projects" in line
    assert "in db 1 (3 of 3 keys sampled, 3 in all)" in line
    assert f"1 client connected as the default user ({client})" in line
    assert "NOAUTH" in line and SETTING in line and str(shared["project"].inventory_path) in line
    assert line.endswith("(nothing was changed)")
    assert not any(value in run.output for value in OTHER_KEYS.values())     # no value is shown
    assert "Traceback" not in run.output
    # nothing changed on the server: redis.conf, the packages, no project user or virtualenv,
    # Redis not restarted, no ACL user; and the other application still works as before
    assert sh(shared, UNTOUCHED) == before
    assert "no-arches" in before and "No such file" in before and sh(shared, "redis-cli ACL USERS") == "default"
    assert sh(shared, "redis-cli -n 1 GET shop:cart:1") == "cart-value-1"
    assert subscribers(shared) == [client]


def test_with_the_client_gone_it_stops_for_the_keys_alone(shared):
    name = shared["name"]
    sh(shared, f"kill {shared['subscriber']}")      # the other application's client goes
    assert wait_for(lambda: not subscribers(shared), 10)
    before = sh(shared, UNTOUCHED)
    run = shared["project"].fab("-H", name, "deploy")
    assert run.returncode == 1, run.output
    line = refusal(run, name)
    assert "in db 1 (3 of 3 keys sampled, 3 in all)" in line
    assert "client" not in line                # the probe's own connection is not counted
    assert sh(shared, UNTOUCHED) == before
    shared["subscriber"] = sh(shared, SUBSCRIBER)     # back, for the next test
    assert wait_for(lambda: len(subscribers(shared)) == 1, 10)


def test_with_the_setting_it_deploys_and_the_other_application_gets_noauth(shared):
    name, project = shared["name"], shared["project"]
    project.data["broker"]["redis_default_user"] = "off-anyway"
    project.write()
    run = project.fab("-H", name, "deploy")
    assert run.returncode == 0, run.output
    assert run.recap()[name]["failed"] == 0
    assert re.search(rf"^{name}\s+broker\s+turn off Redis's passwordless default user", run.output, re.M)
    assert "user default off" in sh(shared, "cat /etc/redis/redis.conf").splitlines()
    # what the refusal said would happen: the other application gets NOAUTH
    assert sh(shared, "redis-cli -n 1 GET shop:cart:1 2>&1").endswith("NOAUTH Authentication required.")
    again = project.fab("-H", name, "deploy")
    assert again.returncode == 0, again.output
    assert again.recap()[name] == {"ok": 7, "changed": 0, "failed": 0}, again.output


@pytest.fixture(scope="module")
def managed(fleet, tmp_path_factory):
    """Debian 13 with Redis installed and nothing else on it yet (no keys, no clients)."""
    host = fleet.start("shr13b", suite="trixie")
    install_example_project(fleet, host)
    fleet.exec(host, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server "
                     ">/dev/null", timeout=600)
    project = Project(fleet, tmp_path_factory.mktemp("shr13b"), {"shr13b": {"roles": ["broker", "worker", "beat"]}})
    yield {"name": "shr13b", "host": host, "fleet": fleet, "project": project}
    fleet.remove(host)


def test_an_acl_user_of_someone_elses_or_a_requirepass_stops_it_too(managed):
    name = managed["name"]
    sh(managed, "redis-cli ACL SETUSER alice on nopass '~alice:*' '+@read' >/dev/null")
    before = sh(managed, UNTOUCHED)
    run = managed["project"].fab("-H", name, "deploy")
    assert run.returncode == 1, run.output
    line = refusal(run, name)
    assert "ACL users that fabcelery did not make (alice)" in line
    assert "keys" not in line.split(". This deploy")[0] and "client" not in line     # none of those here
    assert sh(managed, UNTOUCHED) == before

    sh(managed, "redis-cli ACL DELUSER alice >/dev/null && echo 'requirepass an-app-s-secret' >> /etc/redis/redis.conf "
                "&& systemctl restart redis-server")
    before = sh(managed, "sha256sum /etc/redis/redis.conf /var/lib/dpkg/status; systemctl show -p MainPID --value "
                         "redis-server; getent passwd arches || echo no-arches")
    run = managed["project"].fab("-H", name, "deploy")
    assert run.returncode == 1, run.output
    line = refusal(run, name)
    assert "a requirepass in /etc/redis/redis.conf" in line and "an-app-s-secret" not in run.output
    assert sh(managed, "sha256sum /etc/redis/redis.conf /var/lib/dpkg/status; systemctl show -p MainPID --value "
                       "redis-server; getent passwd arches || echo no-arches") == before
