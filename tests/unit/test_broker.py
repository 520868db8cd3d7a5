"""Broker decisions: URLs, topology, Redis exposure and password, RabbitMQ account."""

from urllib.parse import unquote, urlsplit

import pytest

from tasks.broker import broker_url, url_with_password
from tasks.broker_host import needs_password, new_password, password_file, remote_access
from tasks.broker_kind import broker_of
from tasks.configs import sha256
from tasks.deploy import plan_deploy
from tasks.inventory import InventoryError
from tasks.rabbitmq_broker import rabbitmq_stamp
from tasks.redis_broker import redis_fragment, redis_quote
from tasks.status import COUNTS, host_status
from tasks.target import Target

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of

FLEET = {
    "mq1": {"roles": ["broker"], "internal_address": "10.0.0.5"},
    "app1": {"roles": ["worker", "beat"]},
    "app2": {"roles": ["worker"]},
}
CLUSTER = {
    "mq1": {"roles": ["broker"], "internal_address": "10.0.0.11"},
    "mq2": {"roles": ["broker"], "internal_address": "10.0.0.12"},
    "mq3": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.13"},
}
NASTY = "p@ss:w/rd?#%&= \"x'\\"


def plans(inventory, host, facts, password=PASSWORD):
    return {p.name: p for p in plan_deploy(target_of(inventory, host), facts, password)}


def uploads(plan):
    return {u.target: u for a in plan.actions for u in a.uploads}


def test_single_host_redis_is_local_and_needs_the_projects_account():
    inventory = make_inventory()
    host = inventory.hosts["prod"]
    assert broker_url(Target.of(inventory, host), "s3cret") == "redis://my_proj:s3cret@localhost:6379/0"
    assert needs_password(inventory, host)   # also on a single host: an ACL user of its own


def test_fleet_workers_reach_redis_at_the_internal_address_with_a_quoted_password():
    inventory = make_inventory(hosts=FLEET)
    url = broker_url(target_of(inventory, "app2"), NASTY)
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("redis", "10.0.0.5", 6379, "/0")
    assert parts.username == "my_proj" and unquote(parts.password) == NASTY
    assert needs_password(inventory, inventory.hosts["mq1"]) and remote_access(inventory, inventory.hosts["mq1"])


def test_rabbitmq_url_has_the_projects_user_and_vhost():
    inventory = make_inventory(broker__kind="rabbitmq")
    assert broker_url(target_of(inventory), "s3cret") == "amqp://my_proj:s3cret@127.0.0.1:5672/my_proj"
    assert needs_password(inventory, inventory.hosts["prod"])   # RabbitMQ: always its own user
    fleet = make_inventory(broker__kind="rabbitmq", hosts=FLEET)
    url = broker_url(target_of(fleet, "app1"), NASTY)
    parts = urlsplit(url)
    assert (parts.username, unquote(parts.password), parts.hostname, parts.path) == (
        "my_proj", NASTY, "10.0.0.5", "/my_proj")


def test_external_broker_url_gets_the_password_from_the_environment():
    assert url_with_password("amqp://celery@mq.example:5672/vh", "a/b@c") == "amqp://celery:a%2Fb%40c@mq.example:5672/vh"
    assert url_with_password("redis://mq.example:6379/0", "pw") == "redis://:pw@mq.example:6379/0"
    assert url_with_password("redis://mq.example:6379/0", None) == "redis://mq.example:6379/0"
    inventory = make_inventory(broker__url="redis://mq.example:6379/0",
                               hosts={"app": {"roles": ["worker", "beat"]}})
    assert broker_url(target_of(inventory, "app"), "pw") == "redis://:pw@mq.example:6379/0"
    steps = plans(inventory, "app", fresh_facts())
    assert steps["broker"].noop == "external broker (broker.url)"
    assert "redis-server" not in steps["system"].actions[0].summary


def test_redis_quote_escapes_what_redis_would_misread():
    assert redis_quote('a"b\\c d') == '"a\\"b\\\\c d"'
    assert redis_quote("é") == '"\\xc3\\xa9"'


def test_new_passwords_are_strong_and_plain():
    a, b = new_password(), new_password()
    assert a != b and len(a) == 32 and a.isalnum()


def test_fleet_broker_host_listens_on_its_internal_address_with_the_projects_account():
    inventory = make_inventory(hosts=FLEET)
    broker = plans(inventory, "mq1", fresh_facts(), "s3cret")["broker"]
    files = uploads(broker)
    path = redis_fragment(inventory)
    fragment = files[path].content
    assert "bind 127.0.0.1 -::1 10.0.0.5\n" in fragment and "protected-mode yes\n" in fragment
    assert f"user my_proj reset on #{sha256('s3cret')} " in fragment
    assert "s3cret" not in fragment and "requirepass" not in fragment
    assert (files[path].group, files[path].mode) == ("redis", "0640")
    kept = files[password_file(inventory)]
    assert (kept.owner, kept.mode, kept.diff) == ("root", "0600", False)
    summaries = [a.summary for a in broker.actions]
    assert "include /etc/redis/fabcelery-my_proj.conf at the end of /etc/redis/redis.conf" in summaries
    # the password never appears in a command that runs on the host
    assert all("s3cret" not in a.script for a in broker.actions)


def test_worker_only_host_installs_no_broker():
    inventory = make_inventory(hosts=FLEET)
    steps = plans(inventory, "app2", fresh_facts(), "s3cret")
    assert steps["broker"].noop == "not a broker host"
    assert steps["system"].actions[0].summary == "install python3, python3-venv, logrotate"
    settings = uploads(steps["configs"])["/opt/arches/my_proj/my_proj/settings_local.py"].content
    assert "CELERY_BROKER_URL = 'redis://my_proj:s3cret@10.0.0.5:6379/0'" in settings


def test_broker_only_host_gets_no_celery_programs():
    inventory = make_inventory(hosts=FLEET)
    steps = plans(inventory, "mq1", fresh_facts(), "s3cret")
    targets = uploads(steps["configs"])
    assert "/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf" not in targets
    assert steps["verify"].noop == "no celery programs on this host"


def test_rabbitmq_account_is_set_up_from_the_password_file_on_stdin():
    inventory = make_inventory(broker__kind="rabbitmq")
    broker = plans(inventory, "prod", fresh_facts(), "s3cret")["broker"]
    account = next(a for a in broker.actions if a.summary.startswith("RabbitMQ vhost my_proj"))
    assert "rabbitmqctl add_user my_proj < /var/lib/fabcelery/my_proj/broker-password" in account.script
    assert "rabbitmqctl -q delete_user guest" in account.script
    assert "set_permissions -p my_proj my_proj" in account.script
    assert "s3cret" not in account.script
    assert "listeners.tcp.1 = 127.0.0.1:5672\n" in uploads(broker)["/etc/rabbitmq/conf.d/50-fabcelery.conf"].content


def test_rabbitmq_account_unchanged_is_left_alone():
    inventory = make_inventory(broker__kind="rabbitmq")
    facts = deployed_facts(inventory)
    broker = plans(inventory, "prod", facts, "s3cret")["broker"]
    # deployed_facts has no account stamp yet: the account is (re)applied
    assert [a.summary for a in broker.actions if a.summary.startswith("RabbitMQ")]
    facts.contents["/var/lib/fabcelery/my_proj/rabbitmq-account"] = rabbitmq_stamp("my_proj", "my_proj", "s3cret")
    facts.checksums[password_file(inventory)] = sha256("s3cret")
    facts.services["rabbitmq-server.service"] = {"enabled": "enabled", "active": "active"}
    broker = plans(inventory, "prod", facts, "s3cret")["broker"]
    assert broker.noop == "rabbitmq-server configured, enabled and running"
    # a new password in the environment: stored, and the account's password changed
    broker = plans(inventory, "prod", facts, "n3w")["broker"]
    assert [a.summary for a in broker.actions] == [
        "keep the broker password in /var/lib/fabcelery/my_proj/broker-password (0600, root)",
        "RabbitMQ vhost my_proj, user my_proj with its password, no guest",
    ]


@pytest.mark.parametrize("hosts,message", [
    ({"mq": {"roles": ["broker"], "internal_address": "mq.internal"}, "app": {"roles": ["worker", "beat"]}},
     "'hosts.mq.internal_address' must be an IP address"),
    ({"a": {"roles": ["broker"]}, "b": {"roles": ["broker", "worker", "beat"]}}, "one broker host per fleet"),
    ({"a": {"roles": ["worker"]}, "b": {"roles": ["worker", "broker"], "internal_address": "10.0.0.1"}},
     "exactly one host"),
])
def test_fleet_topology_errors(hosts, message):
    with pytest.raises(InventoryError, match=message):
        make_inventory(hosts=hosts)


def test_external_url_and_a_broker_host_are_exclusive():
    with pytest.raises(InventoryError, match="'broker.url' is set, so no host may have the role broker"):
        make_inventory(broker__url="redis://mq:6379/0")


# --- the broker's row in fab status: each kind says how its ping went -------------------------

@pytest.mark.parametrize(("kind", "facts", "row"), [
    ("redis", {"redis_ping": "PONG"}, ("UP", "redis-cli ping: PONG")),
    ("redis", {"redis_ping": "NOAUTH Authentication required."},
     ("DOWN", "redis-cli ping: NOAUTH Authentication required.")),
    ("redis", {"redis_ping": ""}, ("DOWN", "redis-cli ping: no answer")),
    ("redis", {"redis_ping": None}, ("DOWN", "redis-cli is not installed")),
    ("rabbitmq", {"rabbitmq_ping": True}, ("UP", "rabbitmq-diagnostics ping: ok")),
    ("rabbitmq", {"rabbitmq_ping": False}, ("DOWN", "rabbitmq-diagnostics ping: no answer")),
    ("rabbitmq", {"rabbitmq_ping": None}, ("DOWN", "rabbitmq-diagnostics is not installed")),
])
def test_the_broker_row_of_fab_status_tells_its_ping(kind, facts, row):
    inventory = make_inventory(broker__kind=kind)
    status = host_status(target_of(inventory), fresh_facts(**facts))
    unit = "redis-server" if kind == "redis" else "rabbitmq-server"
    assert (status.broker.name, status.broker.state, status.broker.detail) == (unit, *row)


@pytest.mark.parametrize(("kind", "hosts", "host", "script", "section"), [
    ("redis", None, "prod", "status-redis.sh", "redis"),
    ("rabbitmq", None, "prod", "status-rabbitmq.sh", "rabbitmq"),
    ("rabbitmq", CLUSTER, "mq1", "status-cluster.sh", None),
])
def test_each_broker_kind_names_its_status_program_and_where_its_counts_are(kind, hosts, host, script, section):
    inventory = make_inventory(broker__kind=kind, **({"hosts": hosts} if hosts else {}))
    strategy = broker_of(inventory)
    assert strategy.status_part(inventory.hosts[host])[0] == script
    assert strategy.counts_section(inventory.hosts[host]) == section
    assert section is None or section in COUNTS
