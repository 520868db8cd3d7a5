"""Is work flowing? The queue rows of `fab status`: the state rule, redis-cli's answers read,
the consumers taken from the workers' rows, the table, the JSON and the exit status."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tasks.host_status import HostStatus, ProgramRow
from tasks.inventory_load import parse_inventory
from tasks.programs import inventory_queues
from tasks.queues import (
    FLOWING,
    IDLE,
    NOT_CONSUMED,
    UNKNOWN,
    BrokerCounts,
    parse_amqp_counts,
    parse_rabbitmq_counts,
    parse_redis_counts,
    queue_rows,
    queue_state,
    queue_table,
    queues_ok,
)
from tasks.redis_broker import redis_keys
from tasks.status import status_document, status_script, unreachable

from .conftest import BASE, target_of

POOLS = {"celery": {"queues": ["celery"]}, "exports": {"queues": ["exports", "bulk"]}}
FLEET = {"app1": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.5",
                  "pools": ["celery", "exports"]},
         "app2": {"roles": ["worker"], "pools": ["exports"]}}


def inventory(pools=None, hosts=None, kind="redis"):
    data = copy.deepcopy(BASE)
    data["broker"]["kind"] = kind
    if pools is not None:
        data["celery"]["pools"] = pools
    if hosts is not None:
        data["hosts"] = hosts
    return parse_inventory(data, Path("inventory.yaml"))


@pytest.mark.parametrize("waiting,consumers,unasked,state", [
    (0, 0, False, IDLE),               # empty, nobody consumes: nothing waits, no alarm
    (0, 2, False, IDLE),
    (5, 1, False, FLOWING),
    (5, 0, False, NOT_CONSUMED),       # messages wait and no consumer at all
    (5, 0, True, UNKNOWN),             # a host that should consume was not asked (-H)
    (5, 1, True, FLOWING),
    (None, 1, False, UNKNOWN),         # the broker's count could not be read
    (None, 0, False, UNKNOWN),
])
def test_the_state_rule(waiting, consumers, unasked, state):
    assert queue_state(waiting, consumers, unasked) == state


def test_every_queue_of_every_pool_in_the_inventorys_order_the_default_queue_included():
    assert inventory_queues(inventory()) == ["celery"]
    assert inventory_queues(inventory(POOLS, FLEET)) == ["celery", "exports", "bulk"]
    assert redis_keys(inventory(POOLS, FLEET)) == ["my_proj:celery", "my_proj:exports", "my_proj:bulk",
                                                   "my_proj:unacked"]


@pytest.mark.parametrize("text,waiting,unacked", [
    ("PONG\n3\n0\n7\n2\n", {"celery": 3, "exports": 0, "bulk": 7}, 2),
    ("PONG\n(integer) 3\n(integer) 0\n(integer) 7\n(integer) 2\n", {"celery": 3, "exports": 0, "bulk": 7}, 2),
    # an answer that is not a count (a refused command): that figure is unknown, the others stand
    ("PONG\n3\nNOPERM this user has no permissions to access one of the keys\n7\n1\n",
     {"celery": 3, "exports": None, "bulk": 7}, 1),
    ("PONG\n3\n", {"celery": 3, "exports": None, "bulk": None}, None),       # cut short
    ("WRONGPASS invalid username-password pair\n", {"celery": None, "exports": None, "bulk": None}, None),
    ("", {"celery": None, "exports": None, "bulk": None}, None),
])
def test_redis_answers_read_one_line_per_key(text, waiting, unacked):
    assert parse_redis_counts(inventory(POOLS, FLEET), text) == BrokerCounts(waiting, unacked)


def test_no_redis_section_no_counts():
    assert parse_redis_counts(inventory(), None) is None


def test_the_status_script_asks_the_broker_host_for_each_key_in_one_redis_cli():
    inv = inventory(POOLS, FLEET)
    script = status_script(target_of(inv, "app1"))
    assert "'my_proj:celery my_proj:exports my_proj:bulk my_proj:unacked'" in script
    assert script.count("timeout 3 redis-cli") == 1     # one call, the commands on its stdin
    assert "redis-cli" not in status_script(target_of(inv, "app2"))


def status(host, rows=(), counts=None, error=""):
    return HostStatus(host=host, error=error, programs=tuple(ProgramRow(n, s) for n, s in rows), queue_counts=counts)


COUNTS = BrokerCounts({"celery": 0, "exports": 4, "bulk": 0}, 1)


def test_consumers_are_the_running_pools_the_inventory_places_on_each_host():
    inv = inventory(POOLS, FLEET)
    rows = queue_rows(inv, [status("app1", [("celery", "RUNNING"), ("exports", "RUNNING")], COUNTS),
                            status("app2", [("exports", "RUNNING")])])
    assert [(r.name, r.waiting, r.consumers, r.state) for r in rows] == [
        ("celery", 0, ("celery@app1",), IDLE),
        ("exports", 4, ("exports@app1", "exports@app2"), FLOWING),
        ("bulk", 0, ("exports@app1", "exports@app2"), IDLE)]
    assert queues_ok(rows)


def test_a_queue_whose_pool_is_stopped_everywhere_is_not_consumed_and_names_where_it_should_run():
    inv = inventory(POOLS, FLEET)
    rows = queue_rows(inv, [status("app1", [("celery", "RUNNING"), ("exports", "STOPPED")], COUNTS),
                            status("app2", [("exports", "FATAL")])])
    exports = rows[1]
    assert (exports.state, exports.consumers, exports.expected) == (NOT_CONSUMED, (), ("exports@app1", "exports@app2"))
    assert exports.detail == ("messages wait and no worker consumes them: start exports@app1, exports@app2 "
                              "(fab start-celery)")
    assert rows[2].state == IDLE           # bulk: same pool, nothing waits
    assert not queues_ok(rows)


def test_a_group_of_processes_counts_for_its_pool_and_an_unreachable_host_consumes_nothing():
    inv = inventory(POOLS, FLEET)
    rows = queue_rows(inv, [status("app1", [("celery", "RUNNING"), ("exports:exports_00", "RUNNING")], COUNTS),
                            unreachable("app2", "timed out")])
    assert rows[1].consumers == ("exports@app1",) and rows[1].state == FLOWING
    rows = queue_rows(inv, [status("app1", [("celery", "RUNNING"), ("exports", "STOPPED")], COUNTS),
                            unreachable("app2", "timed out")])
    assert rows[1].state == NOT_CONSUMED


def test_a_host_not_asked_makes_a_waiting_queue_unknown_not_an_alarm():
    inv = inventory(POOLS, FLEET)
    rows = queue_rows(inv, [status("app1", [("celery", "RUNNING"), ("exports", "STOPPED")], COUNTS)])
    assert rows[1].state == UNKNOWN and rows[1].detail == "not asked: exports@app2"
    assert queues_ok(rows)


def test_no_queue_view_without_the_broker_host():
    inv = inventory(POOLS, FLEET)
    assert queue_rows(inv, [status("app2", [("exports", "RUNNING")])]) is None


RABBIT = ('[\n{"name":"celery","messages_ready":2,"messages_unacknowledged":1,"consumers":1}\n'
          ',{"name":"exports","messages_ready":4,"messages_unacknowledged":0,"consumers":0}\n'
          ',{"name":"celery.pidbox","messages_ready":0,"messages_unacknowledged":0,"consumers":3}\n]')


@pytest.mark.parametrize("text,counts", [
    (RABBIT, BrokerCounts({"celery": 2, "exports": 4, "bulk": 0}, 1, {"celery": 1, "exports": 0, "bulk": 0},
                          {"celery": 1, "exports": 0, "bulk": 0})),          # bulk not declared yet: empty
    ("[]", BrokerCounts({"celery": 0, "exports": 0, "bulk": 0}, 0, {"celery": 0, "exports": 0, "bulk": 0},
                        {"celery": 0, "exports": 0, "bulk": 0})),
    ("", BrokerCounts({"celery": None, "exports": None, "bulk": None})),      # only the ping answered
    ("Error: unable to perform an operation on node", BrokerCounts({"celery": None, "exports": None, "bulk": None})),
    ("[{broken", BrokerCounts({"celery": None, "exports": None, "bulk": None})),
    ('[{"name":"celery","messages_ready":"x","messages_unacknowledged":0,"consumers":1}]',
     BrokerCounts({"celery": None, "exports": 0, "bulk": 0}, 0, {"celery": 1, "exports": 0, "bulk": 0},
                  {"celery": 0, "exports": 0, "bulk": 0})),
])
def test_rabbitmqs_list_queues_read(text, counts):
    assert parse_rabbitmq_counts(inventory(POOLS, FLEET, kind="rabbitmq"), text) == counts


def test_on_rabbitmq_the_brokers_consumer_count_decides_and_each_queue_has_its_unacked():
    inv = inventory(POOLS, FLEET, kind="rabbitmq")
    counts = parse_rabbitmq_counts(inv, RABBIT)
    # the pools run, yet RabbitMQ has no consumer on exports: NOT CONSUMED
    rows = queue_rows(inv, [status("app1", [("celery", "RUNNING"), ("exports", "RUNNING")], counts),
                            status("app2", [("exports", "RUNNING")])])
    assert [(r.name, r.waiting, r.unacked, r.consumer_total, r.state) for r in rows] == [
        ("celery", 2, 1, 1, FLOWING), ("exports", 4, 0, 0, NOT_CONSUMED), ("bulk", 0, 0, 0, IDLE)]
    table = queue_table(rows, counts.unacked_total).splitlines()
    assert table[0].split() == ["QUEUE", "WAITING", "OLDEST", "UNACKED", "CONSUMERS", "STATE", "DETAIL"]
    assert table[1].split() == ["celery", "2", "-", "1", "1", "(celery@app1)", "FLOWING"]
    script = status_script(target_of(inv, "app1"))
    assert "--vhost my_proj" in script and "list_queues" in script


def cluster_inventory():
    data = copy.deepcopy(BASE)
    data["broker"] = {"kind": "rabbitmq"}
    data["hosts"] = {f"mq{i}": {"roles": ["broker", "worker"], "internal_address": f"10.0.0.{i}"} for i in (1, 2, 3)}
    data["hosts"]["mq1"]["roles"].append("beat")
    return parse_inventory(data, Path("inventory.yaml"))


CLUSTER_COUNTS = BrokerCounts({"celery": 5}, None, {"celery": 2}, None)
OTHER_COUNTS = BrokerCounts({"celery": 7}, None, {"celery": 0}, None)
UNREAD = BrokerCounts({"celery": None})


@pytest.mark.parametrize("counts,error,view", [
    # every node answers: the first node's view (inventory order)
    ({"mq1": CLUSTER_COUNTS, "mq2": OTHER_COUNTS, "mq3": OTHER_COUNTS}, {}, (5, 2, FLOWING)),
    # the first node is down (no counts) or unreachable: the next node that could read them
    ({"mq1": None, "mq2": CLUSTER_COUNTS, "mq3": OTHER_COUNTS}, {}, (5, 2, FLOWING)),
    ({"mq1": OTHER_COUNTS, "mq2": None, "mq3": CLUSTER_COUNTS}, {"mq1": "timed out"}, (5, 2, FLOWING)),
    # a node whose answer could not be read does not win over one that could
    ({"mq1": UNREAD, "mq2": None, "mq3": OTHER_COUNTS}, {}, (7, 0, NOT_CONSUMED)),
    # no node could read them: unknown, with the running pools as consumers
    ({"mq1": None, "mq2": UNREAD, "mq3": None}, {}, (None, 3, UNKNOWN)),
])
def test_on_a_rabbitmq_cluster_the_queues_come_from_the_first_node_that_could_read_them(counts, error, view):
    inv = cluster_inventory()
    statuses = [unreachable(h, error[h]) if h in error else status(h, [("celery", "RUNNING")], counts[h])
                for h in inv.hosts]
    rows = queue_rows(inv, statuses)
    assert [(r.waiting, r.consumer_total, r.state) for r in rows] == [view]


@pytest.mark.parametrize("text,waiting,consumers", [
    ('[{"name": "celery", "messages_ready": 4, "consumers": 1}, {"name": "bulk", "messages_ready": 0, '
     '"consumers": 2}]', {"celery": 4, "exports": 0, "bulk": 0}, {"celery": 1, "exports": 0, "bulk": 2}),
    ("[]", {"celery": 0, "exports": 0, "bulk": 0}, {"celery": 0, "exports": 0, "bulk": 0}),   # none declared yet
])
def test_a_cluster_nodes_amqp_answer_gives_waiting_and_consumers_and_no_unacknowledged(text, waiting, consumers):
    counts = parse_amqp_counts(inventory(POOLS, FLEET, kind="rabbitmq"), text)
    assert counts == BrokerCounts(waiting, None, consumers, None)


def test_a_cluster_nodes_amqp_answer_that_is_not_the_list_leaves_every_figure_unknown():
    inv = inventory(POOLS, FLEET, kind="rabbitmq")
    assert parse_amqp_counts(inv, "cannot ask 127.0.0.1:5672: [Errno 111] Connection refused") == BrokerCounts(
        {"celery": None, "exports": None, "bulk": None})
    assert parse_amqp_counts(inv, None) is None


def test_a_cluster_nodes_status_asks_its_queues_over_amqp_beside_its_one_rabbitmqctl():
    inv = cluster_inventory()
    script = status_script(target_of(inv, "mq2"))
    assert script.count("rabbitmqctl -q") == 1 and "cluster_status" in script and "-q list_queues" not in script
    assert "--amqpuser my_proj --vhost my_proj" in script
    assert "--passwordfile /var/lib/fabcelery/my_proj/broker-password" in script
    assert "def declare_passive" in script      # tasks/scripts/amqp_queues.py, given inline


def test_the_cluster_table_has_no_unacked_column_and_says_the_total_is_unknown():
    inv = cluster_inventory()
    rows = queue_rows(inv, [status("mq1", [("celery", "RUNNING")], CLUSTER_COUNTS), status("mq2"), status("mq3")])
    table = queue_table(rows, None).splitlines()
    assert table[0].split() == ["QUEUE", "WAITING", "OLDEST", "CONSUMERS", "STATE", "DETAIL"]
    assert table[1].split() == ["celery", "5", "-", "2", "(celery@mq1)", "FLOWING"]
    assert table[-1] == "taken and not yet acknowledged (all queues): ?"


def test_a_broker_that_did_not_answer_leaves_every_queue_unknown():
    inv = inventory(POOLS, FLEET)
    unread = BrokerCounts({"celery": None, "exports": None, "bulk": None}, None)
    rows = queue_rows(inv, [status("app1", [("celery", "RUNNING")], unread), status("app2")])
    assert {r.state for r in rows} == {UNKNOWN}
    assert rows[0].detail == "the broker's counts could not be read"


def test_the_table_and_the_json_carry_the_queues_and_the_json_is_not_ok_when_not_consumed():
    inv = inventory(POOLS, FLEET)
    statuses = [status("app1", [("celery", "RUNNING"), ("exports", "STOPPED")], COUNTS),
                status("app2", [("exports", "STOPPED")])]
    rows = queue_rows(inv, statuses)
    table = queue_table(rows, 1).splitlines()
    assert table[0].split() == ["QUEUE", "WAITING", "OLDEST", "CONSUMERS", "STATE", "DETAIL"]
    assert table[1].split() == ["celery", "0", "-", "1", "(celery@app1)", "IDLE"]
    assert table[2].split()[:6] == ["exports", "4", "-", "0", "NOT", "CONSUMED"]
    assert table[-1] == "taken and not yet acknowledged (all queues): 1"
    document = status_document(statuses, rows)
    assert document["ok"] is False and document["queues"]["unacked_total"] == 1
    assert document["queues"]["queues"][1] == {
        "name": "exports", "waiting": 4, "oldest_waiting_seconds": None, "unacked": None, "consumers": 0,
        "not_taking": [], "consumed_by": [],
        "expected": ["exports@app1", "exports@app2"], "state": "NOT CONSUMED", "detail": rows[1].detail, "ok": False}
    assert "queues" not in status_document(statuses)


def with_stall(s: HostStatus, stall: dict) -> HostStatus:
    from dataclasses import replace
    return replace(s, stall=stall)


@pytest.mark.parametrize("queue_history, app2_programs, state, culprits, program_states", [
    # free slots on both hosts for 70 s (stalled_after 60): NOT CONSUMED, both named, rows NOT-TAKING
    ({"waiting": 4, "head": "m", "head_since": 930, "free_since": 930}, {"exports": {"frozen_since": None}},
     NOT_CONSUMED, ("exports@app1", "exports@app2"), ("NOT-TAKING", "NOT-TAKING")),
    # free for 30 s only: FLOWING
    ({"waiting": 4, "head": "m", "head_since": 930, "free_since": 970}, {}, FLOWING, (), ("RUNNING", "RUNNING")),
    # held messages (busy): FLOWING however long the oldest waits
    ({"waiting": 4, "head": "m", "head_since": 100, "free_since": None}, {}, FLOWING, (), ("RUNNING", "RUNNING")),
])
def test_the_stall_rule_turns_a_flowing_queue_not_consumed_and_names_the_workers(
        queue_history, app2_programs, state, culprits, program_states):
    from tasks.queues import mark_programs
    inv = inventory(POOLS, FLEET)
    broker = with_stall(status("app1", [("celery", "RUNNING"), ("exports", "RUNNING")], COUNTS),
                        {"now": 1000, "queues": {"exports": queue_history}, "programs": {}})
    worker = with_stall(status("app2", [("exports", "RUNNING")]), {"now": 1000, "programs": app2_programs})
    rows = queue_rows(inv, [broker, worker])
    exports = rows[1]
    assert (exports.state, exports.culprits) == (state, culprits)
    assert exports.oldest == 1000 - queue_history["head_since"]
    if state == NOT_CONSUMED:
        assert exports.detail.endswith("it should be taken by exports@app1, exports@app2")
    marked = mark_programs([broker, worker], rows)
    assert (marked[0].programs[1].state, marked[1].programs[0].state) == program_states
    assert all(p.state == "RUNNING" for p in marked[0].programs[:1])


def test_a_frozen_worker_on_another_host_is_read_on_its_own_clock():
    from tasks.queues import mark_programs
    inv = inventory(POOLS, {"app1": {"roles": ["broker", "worker", "beat"], "pools": ["celery"],
                                     "internal_address": "10.0.0.5"},
                            "app2": {"roles": ["worker"], "pools": ["exports"]}})
    broker = with_stall(status("app1", [("celery", "RUNNING")], COUNTS),
                        {"now": 1000, "queues": {"exports": {"waiting": 4, "held": 1, "free_since": None}}})
    # app2's clock is 500 s behind: frozen for 70 s there
    worker = with_stall(status("app2", [("exports", "RUNNING")]),
                        {"now": 500, "programs": {"exports": {"pid": 9, "frozen_since": 430}}})
    rows = queue_rows(inv, [broker, worker])
    assert (rows[1].state, rows[1].culprits) == (NOT_CONSUMED, ("exports@app2",))
    assert "stopped (frozen) for 70 s" in rows[1].detail
    assert mark_programs([broker, worker], rows)[1].programs[0].state == "FROZEN"
