"""The broker's timeouts follow from the pools (tasks/timeouts.py): tables of inventories in,
the values written (settings block, RabbitMQ's config) and the refusals out."""

from __future__ import annotations

import pytest

from tasks.deploy import plan_deploy
from tasks.inventory import InventoryError
from tasks.layout import Layout
from tasks.rabbitmq_broker import RABBITMQ_FRAGMENT
from tasks.timeouts import consumer_timeout, visibility_timeout, written

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of


def pools(*limits):
    """celery.pools with one pool per (time_limit, stopwaitsecs); None leaves a key out."""
    found = {}
    for i, (limit, wait) in enumerate(limits):
        spec = {"queues": [f"q{i}"]}
        if limit:
            spec["time_limit"] = limit
        if wait:
            spec["stopwaitsecs"] = wait
        found[f"p{i}"] = spec
    return found


# (pools' (time_limit, stopwaitsecs), celery.max_eta, Redis visibility_timeout, RabbitMQ consumer_timeout)
DERIVED = [
    ([(None, None)], None, 3600, 1800),                      # stopwaitsecs 600 + 300: the defaults win
    ([(1500, 1500)], None, 3600, 1800),                      # 1500 + 300 = 1800: RabbitMQ's default covers it
    ([(1600, 1600)], None, 3600, 1900),                      # 1600 + 300 > RabbitMQ's 1800
    ([(7200, 7200)], None, 7920, 7920),                      # 7200 + 10 %
    ([(7200, 7200), (60, None)], None, 7920, 7920),          # the longest pool counts
    ([(None, 5000)], None, 5500, 5500),                      # no time_limit: its stopwaitsecs stands for it
    ([(60, None)], 86400, 95040, 95040),                     # a countdown of a day: max_eta + 10 %
    ([(7200, 7200)], 3000, 7920, 7920),                      # max_eta shorter than the longest task
]


@pytest.mark.parametrize("limits, max_eta, redis, rabbitmq", DERIVED)
def test_derived_timeouts(limits, max_eta, redis, rabbitmq):
    eta = {"celery__max_eta": max_eta} if max_eta else {}
    assert visibility_timeout(make_inventory(celery__pools=pools(*limits), **eta)) == redis
    rabbit = make_inventory(celery__pools=pools(*limits), broker__kind="rabbitmq", **eta)
    assert consumer_timeout(rabbit) == rabbitmq
    assert visibility_timeout(rabbit) is None and consumer_timeout(make_inventory(**eta)) is None


def test_default_pool_without_pools_key():
    """The one pool of an inventory without `pools:`: celery.stopwaitsecs stands for its tasks."""
    assert visibility_timeout(make_inventory(celery__stopwaitsecs=4000)) == 4400


# (inventory changes, the value written, or None when it is the broker's default)
WRITTEN = [
    ({}, None),
    ({"celery__pools": pools((7200, 7200))}, 7920),
    ({"broker__visibility_timeout": 3600}, 3600),                # given: always written
    ({"broker__visibility_timeout": 10000, "celery__pools": pools((7200, 7200))}, 10000),
    ({"broker__kind": "rabbitmq"}, None),
    ({"broker__kind": "rabbitmq", "celery__pools": pools((7200, 7200))}, 7920),
    ({"broker__kind": "rabbitmq", "broker__consumer_timeout": 9000, "celery__max_eta": 8000}, 9000),
]


@pytest.mark.parametrize("changes, seconds", WRITTEN)
def test_written(changes, seconds):
    assert written(make_inventory(**changes)) == seconds


def test_external_rabbitmq_gets_no_consumer_timeout():
    inventory = make_inventory(broker__kind="rabbitmq", broker__url="amqp://u@mq.example:5672/v",
                               celery__pools=pools((7200, 7200)), hosts={"w": {"roles": ["worker", "beat"]}})
    assert consumer_timeout(inventory) is None and written(inventory) is None


def test_external_redis_gets_visibility_timeout_in_block():
    inventory = make_inventory(broker__url="redis://u@redis.example:6379/0", celery__pools=pools((7200, 7200)),
                               hosts={"w": {"roles": ["worker", "beat"]}})
    text = settings_block(inventory, "w")
    assert 'CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7920}' in text


def settings_block(inventory, host="prod"):
    plans = plan_deploy(target_of(inventory, host), fresh_facts(hostname=host), PASSWORD)
    uploads = {u.target: u.content for p in plans for a in p.actions for u in a.uploads}
    return uploads[Layout(inventory.project).settings_local]


def test_redis_block_has_visibility_timeout_beside_keyprefix():
    text = settings_block(make_inventory(celery__pools=pools((7200, 7200))))
    assert ('CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": '"'"'my_proj:'"'"', "visibility_timeout": 7920}'
            in text), text
    assert "celery.pools.p0.time_limit (7200 s) and a margin of 720 s" in text


def test_block_unchanged_when_default_suffices():
    """An inventory whose pools the broker's default already covers: the block as before."""
    text = settings_block(make_inventory())
    assert "visibility_timeout" not in text


def rabbitmq_fragment(inventory):
    plans = plan_deploy(target_of(inventory), fresh_facts(), PASSWORD)
    return {u.target: u.content for p in plans for a in p.actions for u in a.uploads}[RABBITMQ_FRAGMENT]


def test_rabbitmq_fragment_has_consumer_timeout_in_ms():
    text = rabbitmq_fragment(make_inventory(broker__kind="rabbitmq", celery__pools=pools((7200, 7200))))
    assert "\nconsumer_timeout = 7920000\n" in text
    assert "consumer_timeout" not in rabbitmq_fragment(make_inventory(broker__kind="rabbitmq"))


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_second_deploy_rewrites_nothing(kind):
    """Deployed with the derived value: neither the settings block nor RabbitMQ's config is
    written again (the test facts model a deployed Redis host fully, RabbitMQ's files only)."""
    inventory = make_inventory(broker__kind=kind, celery__pools=pools((7200, 7200)), celery__max_eta=9000)
    plans = plan_deploy(target_of(inventory), deployed_facts(inventory), PASSWORD)
    uploads = [u.target for p in plans for a in p.actions for u in a.uploads]
    assert uploads == []
    if kind == "redis":
        assert [p.name for p in plans if p.changed] == []


# (inventory changes, the keys the refusal names)
REFUSED = [
    ({"celery__pools": pools((7200, 7200)), "broker__visibility_timeout": 3600},
     ["broker.visibility_timeout", "celery.pools.p0.time_limit"]),
    ({"celery__pools": pools((7200, 7200)), "broker__visibility_timeout": 7200},      # equal is not above
     ["broker.visibility_timeout", "celery.pools.p0.time_limit"]),
    ({"celery__max_eta": 86400, "broker__visibility_timeout": 7200},
     ["broker.visibility_timeout", "celery.max_eta"]),
    ({"celery__stopwaitsecs": 900, "broker__visibility_timeout": 800},
     ["broker.visibility_timeout", "celery.stopwaitsecs"]),
    ({"broker__kind": "rabbitmq", "celery__pools": pools((7200, 7200)), "broker__consumer_timeout": 1800},
     ["broker.consumer_timeout", "celery.pools.p0.time_limit"]),
    ({"broker__kind": "rabbitmq", "broker__visibility_timeout": 9000}, ["broker.visibility_timeout", "Redis only"]),
    ({"broker__consumer_timeout": 9000}, ["broker.consumer_timeout", "RabbitMQ"]),
    ({"celery__max_eta": 0}, ["celery.max_eta"]),
    ({"celery__max_eta": 31 * 86400}, ["celery.max_eta"]),
    ({"broker__visibility_timeout": "1h"}, ["broker.visibility_timeout", "whole number"]),
]


@pytest.mark.parametrize("changes, named", REFUSED)
def test_contradictions_refused(changes, named):
    with pytest.raises(InventoryError) as raised:
        make_inventory(**changes)
    message = str(raised.value)
    assert all(word in message for word in named), message
    assert "nothing was changed" in message


def test_app_check_expects_the_visibility_timeout():
    """The deploy's app check (tasks/scripts/app_settings.py) names an app that misses it."""
    import json
    import shlex

    from tasks.scripts import app_settings

    inventory = make_inventory(celery__pools=pools((7200, 7200)))
    plans = plan_deploy(target_of(inventory), fresh_facts(), PASSWORD)
    (check,) = next(p for p in plans if p.name == "supervisord").checks
    expected = json.loads(shlex.split(check.script)[-1])
    assert expected["visibility_timeout"] == 7920
    seen = {"broker": expected["broker"], "keyprefix": "my_proj:", "task_serializer": "json",
            "result_serializer": "json", "accept_content": ["json"]}
    assert app_settings.differences(expected, {**seen, "visibility_timeout": 7920}) == []
    (found,) = app_settings.differences(expected, {**seen, "visibility_timeout": None})
    assert found[0] == 'CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]'


def test_a_changed_consumer_timeout_restarts_rabbitmq():
    before = make_inventory(broker__kind="rabbitmq", celery__pools=pools((7200, 7200)))
    after = make_inventory(broker__kind="rabbitmq", celery__pools=pools((7200, 7200)), celery__max_eta=9000)
    plans = plan_deploy(target_of(after), deployed_facts(before), PASSWORD)
    broker = next(p for p in plans if p.name == "broker")
    uploads = [u for a in broker.actions for u in a.uploads]
    assert [u.target for u in uploads] == [RABBITMQ_FRAGMENT]
    assert "consumer_timeout = 9900000" in uploads[0].content
    assert any("systemctl restart rabbitmq-server.service" in a.script for a in broker.actions)


def test_a_changed_visibility_timeout_restarts_the_worker():
    before = make_inventory(celery__pools=pools((7200, 7200)))
    after = make_inventory(celery__pools=pools((7200, 7200)), celery__max_eta=9000)
    plans = plan_deploy(target_of(after), deployed_facts(before), PASSWORD)
    supervisord = next(p for p in plans if p.name == "supervisord")
    assert any("restart" in a.summary and "p0" in a.summary for a in supervisord.actions), \
        [a.summary for a in supervisord.actions]
    assert supervisord.checks     # the app check runs first
