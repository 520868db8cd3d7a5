"""A host's Target (tasks/target.py): built once per host and run, it holds what every step and
day-two task reads of the host: its layout, its program table and its broker's strategy."""

from __future__ import annotations

import pytest

from tasks.layout import Layout
from tasks.rabbitmq_broker import RabbitMQ
from tasks.redis_broker import Redis

from .conftest import make_inventory, target_of

POOLS = {"celery": {"queues": ["celery"]}, "exports": {"queues": ["exports"], "stopwaitsecs": 3600}}
FLEET = {
    "app1": {"roles": ["worker"], "pools": ["celery", "exports"]},
    "app2": {"roles": ["worker"], "pools": ["exports"]},
    "app3": {"roles": ["worker"]},
    "mq": {"roles": ["broker"], "internal_address": "10.0.0.6"},
    "cron": {"roles": []},
}
CLUSTER = {
    "mq1": {"roles": ["broker"], "internal_address": "10.0.0.11"},
    "mq2": {"roles": ["broker"], "internal_address": "10.0.0.12"},
    "mq3": {"roles": ["broker", "worker"], "internal_address": "10.0.0.13"},
    "app1": {"roles": ["worker", "beat"]},
}


def pooled(beat: str):
    """FLEET with beat on the host named `beat` (it runs on exactly one; cron is there only for it)."""
    hosts = {name: {**spec, "roles": [*spec["roles"], "beat"] if name == beat else spec["roles"]}
             for name, spec in FLEET.items() if spec["roles"] or name == beat}
    return make_inventory(celery__pools=POOLS, hosts=hosts)


@pytest.mark.parametrize("host, programs, workers", [
    ("app1", ["celery", "exports", "celerybeat"], ["celery", "exports"]),   # its pools in order, then beat
    ("app2", ["exports"], ["exports"]),                                     # only the pool placed there
    ("app3", ["celery", "exports"], ["celery", "exports"]),                 # no `pools:`, every pool
    ("mq", [], []),                                                         # a broker host runs no program
    ("cron", ["celerybeat"], []),                                           # beat alone
])
def test_the_program_table_holds_a_worker_per_pool_placed_on_the_host_then_beat(host, programs, workers):
    target = target_of(pooled(beat="cron" if host == "cron" else "app1"), host)
    assert [p.name for p in target.programs] == programs
    assert [p.name for p in target.workers] == workers


@pytest.mark.parametrize("host, pool, expected", [
    ("app1", None, ["celery", "exports", "celerybeat"]),   # no --pool: every program
    ("app1", "exports", ["exports"]),
    ("app2", "celery", []),                                # a pool placed elsewhere: nothing here
    ("app1", "celerybeat", []),                            # beat is not a pool
])
def test_an_operations_pool_picks_that_pools_worker(host, pool, expected):
    assert [p.name for p in target_of(pooled(beat="app1"), host).pool_programs(pool)] == expected


def test_the_programs_files_and_logs_are_the_layouts():
    target = target_of(pooled(beat="app1"), "app1")
    layout = Layout(target.inventory.project)
    assert target.layout == layout
    assert [(p.config, p.log) for p in target.programs] == [
        (layout.celeryd_conf, layout.worker_log),
        (layout.pool_conf("exports"), layout.pool_log("exports")),
        (layout.celerybeat_conf, layout.beat_log),
    ]
    assert [p.stopwaitsecs for p in target.programs][1] == 3600


@pytest.mark.parametrize("changes, host, kind, manages, cluster", [
    ({}, "prod", Redis, True, False),
    ({"broker__kind": "rabbitmq"}, "prod", RabbitMQ, True, False),
    ({"broker__kind": "rabbitmq", "hosts": CLUSTER}, "mq2", RabbitMQ, True, True),      # a node of a cluster
    ({"broker__kind": "rabbitmq", "hosts": CLUSTER}, "mq3", RabbitMQ, True, True),
    ({"broker__kind": "rabbitmq", "hosts": CLUSTER}, "app1", RabbitMQ, False, False),   # uses the cluster
    ({"broker__url": "redis://mq.example:6379/0", "hosts": {"app": {"roles": ["worker", "beat"]}}},
     "app", Redis, False, False),                                                       # an external broker
])
def test_the_broker_strategy_is_the_inventorys_kind_and_the_host_says_if_it_runs_one(changes, host, kind, manages,
                                                                                       cluster):
    target = target_of(make_inventory(**changes), host)
    assert type(target.broker) is kind
    assert (target.manages_broker, target.in_cluster) == (manages, cluster)
