"""A three-node RabbitMQ cluster (issue 14): facts in, actions out.

The inventory's contract, the formation table (seed, joiner, formed, rejoin), the rendered
files of a node, the failover URL and the settings block, the checks made before anything
changes (RabbitMQ versions, Celery < 5.5), status and the rolling restart's script.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace

import pytest

from tasks.broker import broker_url
from tasks.broker_host import password_file
from tasks.celery_policy import celery_problem
from tasks.configs import sha256
from tasks.deploy import plan_deploy, probe_spec
from tasks.erlang import (
    EPMD_DROPIN,
    RABBITMQ_ENV,
    RABBITMQ_ENV_CONF,
    RABBITMQ_ENV_INCLUDE,
    RABBITMQ_INETRC,
    erlang_network,
)
from tasks.facts_base import QueueSurvey, RabbitQueue
from tasks.inventory import InventoryError
from tasks.operations import Section, broker_restart_operation
from tasks.probe import Facts, parse_probe
from tasks.rabbitmq_broker import RABBITMQ_FRAGMENT, rabbitmq_stamp, rabbitmq_stamp_file
from tasks.rabbitmq_cluster import (
    RABBITMQ_COOKIE,
    cluster_nodes_file,
    cookie_file,
    formation,
    known_members,
    queue_problems,
    version_problems,
)
from tasks.status import cluster_row, status_script
from tasks.target import Target

from .conftest import fresh_facts, make_inventory, probe_output, target_of

CLUSTER = {
    "mq1": {"roles": ["broker"], "internal_address": "10.0.0.11"},
    "mq2": {"roles": ["broker"], "internal_address": "10.0.0.12"},
    "mq3.example.org": {"roles": ["broker", "worker"], "internal_address": "10.0.0.13"},
    "app1": {"roles": ["worker", "beat"]},
}
COOKIE = "COOKIEcookie0123456789abcdefghij"
PASSWORD = "s3cret"


def cluster(**changes):
    return make_inventory(broker__kind="rabbitmq", hosts=CLUSTER, **changes)


def plans(inventory, host, facts, password=PASSWORD, cookie=COOKIE):
    return {p.name: p for p in plan_deploy(target_of(inventory, host), facts, password, cookie=cookie)}


def uploads(plan):
    return {u.target: u for a in plan.actions for u in a.uploads}


def summaries(plan):
    return [a.summary for a in plan.actions]


def members_file(*nodes: str) -> str:
    names = ",".join(f"'{n}'" if "-" in n else n for n in nodes)
    return "{[" + names + "],[" + names + "]}."


def in_place(inventory, host: str, members: tuple[str, ...] = ("rabbit@mq1", "rabbit@mq2", "rabbit@mq3")) -> Facts:
    """A node as a deploy left it: every file in place, running, a member of `members`."""
    spec = inventory.hosts[host]
    facts = fresh_facts(hostname=host.split(".")[0])
    done = uploads(plans(inventory, host, facts)["broker"])
    facts.checksums.update({target: sha256(u.content) for target, u in done.items()})
    facts.checksums[password_file(inventory)] = sha256(PASSWORD)
    facts.checksums[cookie_file(inventory)] = sha256(COOKIE)
    facts.contents[rabbitmq_stamp_file(inventory)] = rabbitmq_stamp("my_proj", "my_proj", PASSWORD)
    facts.contents[cluster_nodes_file(spec)] = members_file(*members)
    facts.services["rabbitmq-server.service"] = {"enabled": "enabled", "active": "active"}
    facts.packages.update({"rabbitmq-server": True, "python3": True})
    facts.versions["rabbitmq-server"] = "4.0.5-6+deb13u2"
    facts.lines[(RABBITMQ_ENV_CONF, RABBITMQ_ENV_INCLUDE)] = True
    return facts


# --- the inventory ------------------------------------------------------------------------


def test_three_rabbitmq_broker_hosts_are_one_cluster_seeded_by_the_first():
    inventory = cluster()
    assert [h.name for h in inventory.broker_hosts()] == ["mq1", "mq2", "mq3.example.org"]
    assert formation(inventory, inventory.hosts["mq1"], fresh_facts()) == "seed"


@pytest.mark.parametrize("hosts,kind,message", [
    ({"mq1": {"roles": ["broker"], "internal_address": "10.0.0.11"},
      "mq2": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.12"}}, "rabbitmq",
     "a RabbitMQ cluster needs an odd number of them, at least 3 (a two-node cluster's quorum queues cannot "
     "survive the loss of either node)"),
    ({f"mq{i}": {"roles": ["broker"], "internal_address": f"10.0.0.{i}"} for i in range(1, 5)}
     | {"app": {"roles": ["worker", "beat"]}}, "rabbitmq", "an odd number of them"),
    ({"mq1": {"roles": ["broker"], "internal_address": "10.0.0.11"},
      "mq2": {"roles": ["broker"], "internal_address": "10.0.0.12"},
      "mq3": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.13"}}, "redis",
     "Redis has one broker host per fleet (fabcelery does not set up Redis Sentinel"),
    ({"mq1": {"roles": ["broker"], "internal_address": "10.0.0.11"},
      "mq2": {"roles": ["broker"]},
      "mq3": {"roles": ["broker", "worker", "beat"], "internal_address": "mq3.internal"}}, "rabbitmq",
     "'hosts.mq2.internal_address' is missing"),
    ({"mq1.a": {"roles": ["broker"], "internal_address": "10.0.0.11"},
      "mq1.b": {"roles": ["broker"], "internal_address": "10.0.0.12"},
      "mq3": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.13"}}, "rabbitmq",
     "'hosts' mq1.a, mq1.b would all be the RabbitMQ node rabbit@mq1"),
])
def test_broker_topologies_that_are_refused(hosts, kind, message):
    with pytest.raises(InventoryError) as caught:
        make_inventory(broker__kind=kind, hosts=hosts)
    assert message in str(caught.value) and str(caught.value).endswith("nothing was changed.")


def test_a_named_internal_address_that_is_no_ip_is_refused_for_a_node():
    hosts = {**CLUSTER, "mq2": {"roles": ["broker"], "internal_address": "mq2.internal"}}
    with pytest.raises(InventoryError, match="'hosts.mq2.internal_address' must be an IP address"):
        make_inventory(broker__kind="rabbitmq", hosts=hosts)


def test_cookie_env_is_a_key_of_broker():
    assert cluster().broker.cookie_env == "FABCELERY_ERLANG_COOKIE"
    assert cluster(broker__cookie_env="MY_COOKIE").broker.cookie_env == "MY_COOKIE"
    with pytest.raises(InventoryError, match="'broker.cookie_env' must be an environment variable name"):
        cluster(broker__cookie_env="not ok")


# --- formation: facts in, actions out -----------------------------------------------------

JOIN = "join the RabbitMQ cluster of rabbit@mq1 as rabbit@mq2"
ACCOUNT = "RabbitMQ vhost my_proj, user my_proj with its password, no guest"


@pytest.mark.parametrize("host,members,role,has_join,has_account", [
    ("mq1", None, "seed", False, True),                                                  # fresh seed
    ("mq2", None, "join", True, False),                                                  # fresh joiner
    ("mq2", ("rabbit@mq2",), "join", True, False),                                       # on its own
    ("mq2", ("rabbit@mq1", "rabbit@mq2", "rabbit@mq3"), "formed", False, False),         # a member
])
def test_formation_table(host, members, role, has_join, has_account):
    inventory = cluster()
    facts = fresh_facts(hostname=host)
    if members:
        facts.contents[cluster_nodes_file(inventory.hosts[host])] = members_file(*members)
    assert formation(inventory, inventory.hosts[host], facts) == role
    broker = plans(inventory, host, facts)["broker"]
    assert (JOIN in summaries(broker)) == has_join
    assert (ACCOUNT in summaries(broker)) == has_account


def test_a_formed_cluster_changes_nothing():
    inventory = cluster()
    for host in ("mq1", "mq2", "mq3.example.org"):
        broker = plans(inventory, host, in_place(inventory, host))["broker"]
        assert not broker.actions, (host, summaries(broker))
        expected = "seeds the cluster" if host == "mq1" else "is a member of the cluster"
        assert expected in broker.noop


def test_a_node_that_lost_its_data_rejoins_and_nothing_else_changes():
    inventory = cluster()
    facts = in_place(inventory, "mq2", members=("rabbit@mq2",))    # reinstalled: a cluster of its own
    broker = plans(inventory, "mq2", facts)["broker"]
    assert summaries(broker) == [JOIN]
    script = broker.actions[0].script
    order = ["rabbitmqctl -q -n rabbit@mq1 await_startup", "rabbitmqctl -q stop_app",
             "rabbitmqctl -q join_cluster rabbit@mq1",
             "rabbitmqctl -q -n rabbit@mq1 forget_cluster_node rabbit@mq2",
             "rabbitmqctl -q start_app", "rabbitmq-queues -q grow rabbit@mq2 all"]
    positions = [script.index(step) for step in order]
    assert positions == sorted(positions)
    assert "*inconsistent_cluster*" in script       # forgotten on the seed only when the seed says so
    assert all(f"timeout 120 rabbitmqctl -q {c}" in script for c in ("stop_app", "start_app", "join_cluster"))


def test_the_membership_is_read_from_the_nodes_own_file():
    node = cluster().hosts["mq2"]
    assert cluster_nodes_file(node) == "/var/lib/rabbitmq/mnesia/rabbit@mq2/cluster_nodes.config"
    facts = Facts(contents={cluster_nodes_file(node): "{['rabbit@cl-mq1',rabbit@mq2],[rabbit@mq2]}.\n"})
    assert known_members(facts, node) == ["rabbit@cl-mq1", "rabbit@mq2"]
    assert known_members(Facts(), node) == []
    spec = probe_spec(Target.of(cluster(), node))
    assert cluster_nodes_file(node) in spec.contents and cookie_file(cluster()) in spec.contents
    assert RABBITMQ_COOKIE in spec.checksums and RABBITMQ_COOKIE not in spec.contents   # never read back


# --- the cookie ---------------------------------------------------------------------------


def test_the_cookie_is_uploaded_as_a_file_rabbitmqs_0400_and_never_on_a_command_line():
    inventory = cluster()
    broker = plans(inventory, "mq2", fresh_facts(hostname="mq2"))["broker"]
    files = uploads(broker)
    node_cookie, kept = files[RABBITMQ_COOKIE], files[cookie_file(inventory)]
    assert (node_cookie.content, node_cookie.owner, node_cookie.group, node_cookie.mode) == \
        (COOKIE, "rabbitmq", "rabbitmq", "0400")
    assert (kept.content, kept.owner, kept.mode) == (COOKIE, "root", "0600")
    assert all(u.secret and not u.diff for u in (node_cookie, kept))
    assert all(COOKIE not in a.script and PASSWORD not in a.script for a in broker.actions)
    # a new cookie takes a restart of the node
    assert any("systemctl restart rabbitmq-server.service" in a.script for a in broker.actions)


def test_a_node_with_another_cookie_gets_the_clusters_and_restarts():
    inventory = cluster()
    facts = in_place(inventory, "mq3.example.org")
    facts.checksums[RABBITMQ_COOKIE] = sha256("the package's own")
    broker = plans(inventory, "mq3.example.org", facts)["broker"]
    assert summaries(broker) == [f"install {RABBITMQ_COOKIE}", "restart and check rabbitmq-server.service"]


def test_a_cluster_node_without_a_cookie_is_refused():
    inventory = cluster()
    broker = plans(inventory, "mq1", fresh_facts(), cookie=None)["broker"]
    assert broker.error and "Erlang cookie" in broker.error


# --- the rendered files -------------------------------------------------------------------


def test_a_nodes_erlang_side_listens_on_loopback_and_its_internal_address_only():
    inventory = cluster()
    net = erlang_network(inventory, inventory.hosts["mq2"], "mq2")
    assert net.epmd == ("127.0.0.1", "10.0.0.12") and net.distribution == "10.0.0.12"
    assert net.node == "rabbit@mq2"
    assert net.peers == (("10.0.0.11", ("mq1",)), ("10.0.0.13", ("mq3", "mq3.example.org")))
    files = uploads(plans(inventory, "mq2", fresh_facts(hostname="mq2"))["broker"])
    env = files[RABBITMQ_ENV].content
    assert "\nNODENAME=rabbit@mq2\n" in env and "\nERL_EPMD_ADDRESS=127.0.0.1,10.0.0.12\n" in env
    assert "-kernel inet_dist_use_interface {10,0,0,12}\"\n" in env
    inetrc = files[RABBITMQ_INETRC].content
    assert '\n{host, {10,0,0,12}, ["mq2"]}.\n' in inetrc
    assert '\n{host, {10,0,0,11}, ["mq1"]}.\n{host, {10,0,0,13}, ["mq3", "mq3.example.org"]}.\n' in inetrc
    assert inetrc.endswith("{lookup, [file, native]}.\n")
    assert files[EPMD_DROPIN].content.endswith("ListenStream=\nListenStream=127.0.0.1:4369\n"
                                               "ListenStream=10.0.0.12:4369\n")
    assert files[RABBITMQ_FRAGMENT].content.endswith("listeners.tcp.1 = 127.0.0.1:5672\n"
                                                     "listeners.tcp.2 = 10.0.0.12:5672\n")
    assert "0.0.0.0" not in "".join(u.content for u in files.values() if isinstance(u.content, str))


def test_a_single_node_keeps_its_files_byte_for_byte():
    # the cluster's additions render to nothing for one broker host: no restart after an upgrade
    inventory = make_inventory(broker__kind="rabbitmq")
    files = uploads(plans(inventory, "prod", fresh_facts(), cookie=None)["broker"])
    assert "NODENAME" not in files[RABBITMQ_ENV].content
    assert "%% The other nodes" not in files[RABBITMQ_INETRC].content
    assert RABBITMQ_COOKIE not in files


# --- the URL and the settings block -------------------------------------------------------


def test_the_url_lists_every_node_for_failover_this_hosts_own_first():
    inventory = cluster()
    url = broker_url(target_of(inventory, "app1"), "p@ss")
    assert url == ";".join(f"amqp://my_proj:p%40ss@10.0.0.{i}:5672/my_proj" for i in (11, 12, 13))
    local = broker_url(target_of(inventory, "mq3.example.org"), "p")
    assert local.split(";") == ["amqp://my_proj:p@127.0.0.1:5672/my_proj", "amqp://my_proj:p@10.0.0.11:5672/my_proj",
                                "amqp://my_proj:p@10.0.0.12:5672/my_proj"]


def test_the_settings_block_declares_quorum_queues_with_publisher_confirms_for_a_cluster_only():
    inventory = cluster()
    settings = uploads(plans(inventory, "app1", fresh_facts(hostname="app1"))["configs"])[
        "/opt/arches/my_proj/my_proj/settings_local.py"].content
    block = settings[settings.index("# BEGIN"):]
    assert "CELERY_BROKER_URL = 'amqp://my_proj:s3cret@10.0.0.11:5672/my_proj;amqp://" in block
    assert '\nCELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"\n' in block
    assert '\nCELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}\n' in block
    assert "\nCELERY_WORKER_DETECT_QUORUM_QUEUES = True\n" in block
    single = make_inventory(broker__kind="rabbitmq")
    settings = uploads(plans(single, "prod", fresh_facts(), cookie=None)["configs"])[
        "/opt/arches/my_proj/my_proj/settings_local.py"].content
    assert "quorum" not in settings and "confirm_publish" not in settings


# --- refused before anything changes ------------------------------------------------------


def node_facts(version: str | None, release: str = "13") -> Facts:
    facts = fresh_facts(os={"id": "debian", "version_id": release, "pretty_name": f"Debian {release}"})
    if version:
        facts.packages["rabbitmq-server"] = True
        facts.versions["rabbitmq-server"] = version
    return facts


@pytest.mark.parametrize("nodes,refused", [
    ({"mq1": ("4.0.5-6+deb13u2", "13"), "mq2": ("4.0.9-1", "13"), "mq3": (None, "13")}, False),
    ({"mq1": (None, "12"), "mq2": (None, "12"), "mq3": (None, "12")}, False),
    ({"mq1": ("4.0.5-6+deb13u2", "13"), "mq2": ("3.10.8-1.1+deb12u1", "12"), "mq3": ("4.0.5", "13")}, True),
    ({"mq1": ("4.0.5-6+deb13u2", "13"), "mq2": ("4.0.5-6+deb13u2", "13"), "mq3": (None, "12")}, True),
    ({"mq1": (None, "13"), "mq2": (None, "12"), "mq3": (None, "13")}, True),
])
def test_nodes_of_different_rabbitmq_versions_are_refused(nodes, refused):
    problems = version_problems(cluster(), {name: node_facts(*spec) for name, spec in nodes.items()})
    assert bool(problems) == refused
    if refused:
        assert "same RabbitMQ major.minor version" in problems[0] and "Debian 12 ships RabbitMQ 3.10" in problems[0]


CELERY_CLASSIC = RabbitQueue("celery", "classic", durable=True, transient=False, messages=3)
EXPORTS_EMPTY = RabbitQueue("exports", "classic", durable=True, transient=False, messages=0)
PIDBOX = RabbitQueue("celery@app1.celery.pidbox", "classic", durable=False, transient=True, messages=0)
QUORUM = RabbitQueue("celery", "quorum", durable=True, transient=False, messages=7)


def listed(queues, members: str | None = None) -> Facts:
    """A node whose queues the probe listed; `members`: what its cluster_nodes.config holds."""
    facts = node_facts("4.0.5-6+deb13u2")
    contents = {cluster_nodes_file(cluster().hosts["mq2"]): members} if members else {}
    return replace(facts, rabbitmq_queues=queues, contents=contents)


# node -> its listing; the nodes refused, and what the refusals must say
@pytest.mark.parametrize("nodes,refused,said", [
    ({"mq1": listed((CELERY_CLASSIC, EXPORTS_EMPTY, PIDBOX))},
     ["mq1"], ["mq1 holds classic queues in the vhost my_proj (celery: 3 messages, exports: 0 messages)",
      "`rabbitmqctl delete_queue -p my_proj celery; rabbitmqctl delete_queue -p my_proj exports`",
      "fab stop-celery"]),
    ({"mq1": listed((QUORUM, PIDBOX))}, [], []),                   # a seed whose queues are quorum already
    ({"mq1": listed((PIDBOX,))}, [], []),                         # a worker's transient queues only
    ({"mq1": listed(())}, [], []),
    ({"mq1": node_facts("4.0.5-6+deb13u2")}, [], []),              # not listed: the node is formed, or down
    ({"mq2": listed((QUORUM, PIDBOX))},
     ["mq2"], ["mq2 is to join the cluster of mq1, and joining resets a node: the messages in its queues of the vhost "
      "my_proj (celery: 7 messages) would be lost"]),
    ({"mq2": listed((EXPORTS_EMPTY, PIDBOX))}, [], []),            # nothing to lose: the join resets it
    ({"mq2": listed((QUORUM,), members="{['rabbit@mq1','rabbit@mq2'],['rabbit@mq1']}.")}, [], []),   # formed
    ({"mq1": listed((CELERY_CLASSIC,)), "mq2": listed((QUORUM,))}, ["mq1", "mq2"],
     ["mq1 holds", "mq2 is to join"]),
])
def test_queues_that_forming_the_cluster_would_break_or_lose_are_refused(nodes, refused, said):
    problems = queue_problems(cluster(), nodes, "my_proj")
    assert [p.split(" ")[0] for p in problems] == refused
    text = "; ".join(problems)
    assert all(s in text for s in said), text


def test_a_cluster_node_asks_for_its_queues_until_it_is_in_the_whole_cluster():
    inventory = cluster()
    spec = probe_spec(target_of(inventory, "mq2"))
    assert spec.rabbitmq_queues == QueueSurvey("my_proj", cluster_nodes_file(inventory.hosts["mq2"]),
                                               ("rabbit@mq1", "rabbit@mq3"))
    assert probe_spec(target_of(inventory, "app1")).rabbitmq_queues is None
    single = make_inventory(broker__kind="rabbitmq", hosts={"mq1": {"roles": ["broker", "worker", "beat"]}})
    assert probe_spec(target_of(single, "mq1")).rabbitmq_queues is None


def test_the_probe_reads_each_packages_version():
    facts = parse_probe(probe_output(dpkg="rabbitmq-server ii  4.0.5-6+deb13u2\nredis-server un  \n"))
    assert facts.installed("rabbitmq-server") and facts.versions == {"rabbitmq-server": "4.0.5-6+deb13u2"}


@pytest.mark.parametrize("dists,requirements,refused", [
    ({"celery": "5.3.6"}, None, True),            # Arches 7.5 to 8.0's pin, in the virtualenv
    ({"celery": "5.5.0"}, None, False),
    ({}, "celery==5.3.6\n", True),                 # a fresh virtualenv gets the project's pin
    ({}, "Django>=4.2\n", False),                  # ... or fabcelery's (5.7.0)
])
def test_celery_older_than_5_5_is_refused_on_a_clusters_fleet(dists, requirements, refused):
    inventory = cluster(project__requirements="requirements.txt")
    facts = fresh_facts(hostname="app1", dists=dists)
    if requirements is not None:
        facts.contents["/opt/arches/my_proj/requirements.txt"] = requirements
    problem = celery_problem(target_of(inventory, "app1"), facts)
    assert bool(problem) == refused
    steps = plan_deploy(target_of(inventory, "app1"), facts, PASSWORD)
    if refused:
        assert [s.name for s in steps] == ["preflight"] and "Celery 5.5 or later" in steps[0].error
        assert "5.3.6" in steps[0].error and "Arches 7.5 to 8.0 pin celery 5.3.6" in steps[0].error
    # one broker host: classic queues, any celery
    single = make_inventory(broker__kind="rabbitmq", hosts={"mq": {"roles": ["broker"], "internal_address": "10.0.0.5"},
                                                            "app1": {"roles": ["worker", "beat"]}})
    assert not celery_problem(target_of(single, "app1"), facts)



@pytest.mark.parametrize("queues,celery,refused", [
    (["celery"], "5.5.0", False),              # only the default queue: its type is task_default_queue_type
    (["exports"], "5.5.0", True),              # a pool's own queue: created on demand, classic before 5.6
    (["exports"], "5.6.0", False),
    (["exports", "celery"], "5.3.6", True),    # the 5.5 refusal first
])
def test_a_pools_own_queue_on_a_cluster_needs_celery_5_6(queues, celery, refused):
    inventory = cluster(celery__pools={"celery": {"queues": ["celery"]}, "exports": {"queues": queues}})
    facts = fresh_facts(hostname="app1", dists={"celery": celery})
    problem = celery_problem(target_of(inventory, "app1"), facts)
    assert bool(problem) == refused
    if refused and celery.startswith("5.5"):
        assert "need Celery 5.6 or later" in problem and "exports" in problem and celery in problem
    # and the settings block asks for quorum queues also for the queues Celery creates
    if not refused:
        block = uploads(plans(inventory, "app1", facts)["configs"])
        text = "".join(u.content for u in block.values() if "CELERY_BROKER_URL" in u.content)
        assert 'CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = "quorum"' in text


# --- status and the rolling restart -------------------------------------------------------


def status_of(host: str, ok: bool = True, **fields) -> tuple:
    raw = {"running_nodes": ["rabbit@mq1", "rabbit@mq2", "rabbit@mq3"],
           "disk_nodes": ["rabbit@mq1", "rabbit@mq2", "rabbit@mq3"], "ram_nodes": [], "partitions": {}, "alarms": []}
    raw.update(fields)
    inventory = cluster()
    return cluster_row(target_of(inventory, host), Section(0 if ok else 69, json.dumps(raw) if ok else
                                                                 "Error: unable to perform an operation on node"))


@pytest.mark.parametrize("host,ok,fields,state,detail", [
    ("mq1", True, {}, "UP", "rabbit@mq1, member; cluster: 3/3 nodes running; no partitions, no alarms"),
    ("mq1", True, {"running_nodes": ["rabbit@mq1", "rabbit@mq3"]}, "UP", "2/3 nodes running, down: rabbit@mq2"),
    ("mq2", False, {}, "DOWN", "rabbit@mq2 does not answer"),
    ("mq2", True, {"running_nodes": ["rabbit@mq1", "rabbit@mq3"]}, "DOWN", "rabbit@mq2 is not running"),
    ("mq2", True, {"running_nodes": ["rabbit@mq2"], "disk_nodes": ["rabbit@mq2"]}, "NOT-CLUSTERED",
     "lacks rabbit@mq1, rabbit@mq3"),
    ("mq1", True, {"partitions": {"rabbit@mq1": ["rabbit@mq3"]}}, "PARTITIONED", "rabbit@mq1 cannot see rabbit@mq3"),
    ("mq1", True, {"alarms": [{"node": "rabbit@mq1", "resource": "disk"}]}, "ALARM", "rabbit@mq1 disk"),
])
def test_status_of_a_node(host, ok, fields, state, detail):
    row, info = status_of(host, ok, **fields)
    assert row.state == state and detail in row.detail, row
    assert row.ok == (state == "UP")
    if ok:
        assert info["node"] == f"rabbit@{host}"


def test_a_node_that_does_not_answer_shows_the_error_not_the_cookie_hash():
    inventory = cluster()
    answer = ("Error: unable to perform an operation on node 'rabbit@mq2'. Please see diagnostics information\n\n"
              "DIAGNOSTICS\n===========\n\nCurrent node details:\n * node name: 'rabbitmqcli-1-rabbit@mq2'\n"
              " * effective user's home directory: /var/lib/rabbitmq\n * Erlang cookie hash: c2VjcmV0aGFzaA==\n")
    row, _ = cluster_row(target_of(inventory, "mq2"), Section(69, answer))
    assert row.detail == "rabbit@mq2 does not answer: Error: unable to perform an operation on node 'rabbit@mq2'. " \
        "Please see diagnostics information"
    assert "cookie" not in row.detail


def test_status_asks_a_node_with_one_bounded_cli_call():
    inventory = cluster()
    script = status_script(target_of(inventory, "mq2"))
    assert "section cluster timeout 20 rabbitmqctl -q cluster_status --formatter json" in script
    assert "rabbitmq-diagnostics" not in script


# restart-broker's program (tasks/scripts/restart-broker.sh) run by sh, with the broker's
# commands replaced by a stub that logs each call: which commands run, in which order
STUB = """#!/bin/sh
echo "${0##*/} $*" >> "$STUB_LOG"
case "${0##*/} $*" in
  "$STUB_FAIL"*) echo "Error: quorum critical"; exit 69 ;;
  "rabbitmqctl -q cluster_status"*) echo '{"running_nodes": ["rabbit@mq3", "rabbit@mq1", "rabbit@mq2"]}' ;;
  "redis-cli "*) echo PONG ;;
esac
"""


def run_restart(tmp_path, inventory, host, fail=""):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("systemctl", "rabbitmqctl", "rabbitmq-upgrade", "rabbitmq-diagnostics", "redis-cli"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    op = broker_restart_operation(target_of(inventory, host))
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STUB_LOG": str(log), "STUB_FAIL": fail or "-"}
    out = subprocess.run(["sh", "-c", op.script], env=env, capture_output=True, text=True, timeout=60)
    return op.interpret(out.stdout), log.read_text().splitlines()


QUORUM = "rabbitmq-upgrade -q -t 120 await_online_quorum_plus_one"
CRITICAL = "rabbitmq-diagnostics -q check_if_node_is_quorum_critical"


@pytest.mark.parametrize("kind,hosts,host,fail,calls,said", [
    # a cluster node: the quorum checks, the restart, its start, every node running, the queues' members
    ("rabbitmq", CLUSTER, "mq2", "", [QUORUM, CRITICAL, "systemctl restart rabbitmq-server.service",
                                      "rabbitmqctl -q await_startup", "rabbitmqctl -q cluster_status --formatter json",
                                      QUORUM],
     "restarted rabbit@mq2; back in the cluster, every quorum queue's members online"),
    # a quorum-critical node is not restarted
    ("rabbitmq", CLUSTER, "mq2", "rabbitmq-diagnostics", [QUORUM, CRITICAL],
     "failed: rabbit@mq2 is quorum-critical (a quorum queue would lose its quorum): Error: quorum critical "
     "(not restarted)"),
    # a single RabbitMQ: no quorum checks
    ("rabbitmq", None, "prod", "", ["systemctl restart rabbitmq-server.service", "rabbitmqctl -q await_startup"],
     "restarted rabbitmq-server; it answers"),
    # Redis: back when the project's own account gets PONG
    ("redis", None, "prod", "", ["systemctl restart redis-server.service", "redis-cli --user my_proj ping"],
     "restarted redis-server; it answers"),
    ("redis", None, "prod", "systemctl", ["systemctl restart redis-server.service"],
     "failed: systemctl restart redis-server.service failed: Error: quorum critical"),
])
def test_restart_broker_runs_the_checks_of_its_broker_in_order(tmp_path, kind, hosts, host, fail, calls, said):
    inventory = make_inventory(broker__kind=kind, **({"hosts": hosts} if hosts else {}))
    outcome, log = run_restart(tmp_path, inventory, host, fail)
    assert log == calls
    assert outcome.lines == [said]
    assert bool(outcome.failed) == said.startswith("failed")


def test_a_node_added_to_the_inventory_reaches_the_running_nodes_without_restarting_them():
    inventory = cluster()
    facts = in_place(inventory, "mq1")
    grown = make_inventory(broker__kind="rabbitmq", hosts={
        **CLUSTER, "mq4": {"roles": ["broker"], "internal_address": "10.0.0.14"},
        "mq5": {"roles": ["broker"], "internal_address": "10.0.0.15"}})
    broker = plans(grown, "mq1", facts)["broker"]
    assert summaries(broker) == [f"install {RABBITMQ_INETRC}",
                                 f"rabbit@mq1 reads the cluster's names anew from {RABBITMQ_INETRC}"]
    assert '\n{host, {10,0,0,15}, ["mq5"]}.\n' in uploads(broker)[RABBITMQ_INETRC].content
    assert "inet_db:add_rc(\"/etc/rabbitmq/fabcelery.inetrc\")" in broker.actions[1].script
    assert not any("systemctl" in a.script for a in broker.actions)
    # the new nodes join the seed
    assert "join the RabbitMQ cluster of rabbit@mq1 as rabbit@mq4" in summaries(
        plans(grown, "mq4", fresh_facts(hostname="mq4"))["broker"])


# --- the fleet's shared values ------------------------------------------------------------


def quiet():
    from tasks.report import Reporter

    return Reporter(stream=open(os.devnull, "w"))


def gate_for(inventory, kept: dict[str, tuple[str, str]], versions: dict[str, str] | None = None):
    from tasks.fleet import BrokerGroup

    gate = BrokerGroup(inventory, quiet(), list(inventory.hosts), outside={}, unreachable={})
    for name in gate.members:
        facts = node_facts((versions or {}).get(name, "4.0.5-6+deb13u2"))
        password, cookie = kept.get(name, ("", ""))
        if password:
            facts.contents[password_file(inventory)] = password + "\n"
        if cookie:
            facts.contents[cookie_file(inventory)] = cookie
        gate.report(name, facts)
    assert gate.decided.is_set()
    return gate


def test_the_cluster_takes_the_password_and_cookie_of_the_first_node_that_keeps_them(monkeypatch):
    monkeypatch.delenv("FABCELERY_BROKER_PASSWORD", raising=False)
    monkeypatch.delenv("FABCELERY_ERLANG_COOKIE", raising=False)
    inventory = cluster()
    # mq1 was reinstalled (keeps nothing): mq2's values win over mq3's, nothing new
    gate = gate_for(inventory, {"mq2": ("pw2", "ck2"), "mq3.example.org": ("pw3", "ck3")})
    assert (gate.values, gate.new) == ({"password": "pw2", "cookie": "ck2"}, {"password": False, "cookie": False})
    assert not gate.problem
    fresh = gate_for(inventory, {})
    assert fresh.new == {"password": True, "cookie": True} and len(fresh.values["cookie"]) == 32
    assert fresh.values["cookie"] != fresh.values["password"]
    monkeypatch.setenv("FABCELERY_ERLANG_COOKIE", "from-env")
    assert gate_for(inventory, {"mq1": ("pw1", "ck1")}).values["cookie"] == "from-env"


def test_a_node_that_cannot_be_probed_does_not_hold_up_the_others():
    from tasks.fleet import BrokerGroup

    inventory = cluster()
    gate = BrokerGroup(inventory, quiet(), list(inventory.hosts), outside={"mq9": {}}, unreachable={})
    gate.report("mq1", None)
    gate.report("mq2", node_facts("4.0.5"))
    assert not gate.decided.is_set()
    gate.report("mq3.example.org", node_facts("4.0.5"))
    assert gate.decided.is_set() and not gate.problem


def test_mixed_versions_stop_every_node_before_it_changes():
    gate = gate_for(cluster(), {}, versions={"mq2": "3.10.8-1.1+deb12u1"})
    assert "mq2 RabbitMQ 3.10" in gate.problem and "mq1 RabbitMQ 4.0" in gate.problem
