"""Failover in seconds (issue 21, item 4): on a RabbitMQ cluster the settings block gives the
worker a consumer whose delayed-delivery setup goes through the node the worker is connected
to, instead of Celery's, which tries every node of the URL (a stopped one for about 17 s).
The block is Python that the worker imports: here it is compiled and run without Celery (the
class is built only when the worker asks for it)."""

from __future__ import annotations

import types

import pytest

from tests.unit.test_rabbitmq_cluster import cluster, fresh_facts, make_inventory, plans, uploads

SETTINGS = "/opt/arches/my_proj/my_proj/settings_local.py"


def block(inventory, host: str) -> str:
    settings = uploads(plans(inventory, host, fresh_facts(hostname=host))["configs"])[SETTINGS].content
    return settings[settings.index("# BEGIN"):]


# (the inventory, the host whose block is read) -> does the block set the worker's consumer?
CASES = [
    ("rabbitmq cluster, worker host", lambda: cluster(), "app1", True),
    ("rabbitmq cluster, broker and worker host", lambda: cluster(), "mq3.example.org", True),
    ("one rabbitmq host", lambda: make_inventory(broker__kind="rabbitmq"), "prod", False),
    ("one redis host", lambda: make_inventory(), "prod", False),
]


@pytest.mark.parametrize(("inventory", "host", "consumer"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_worker_consumer_is_set_on_a_cluster_only(inventory, host, consumer):
    text = block(inventory(), host)
    assert ('\nCELERY_WORKER_CONSUMER = __name__ + ":FabceleryConsumer"\n' in text) is consumer
    assert ("def __getattr__(name):" in text) is consumer
    compile(text, SETTINGS, "exec")       # the block is valid Python in every case


def test_the_block_names_a_class_of_its_own_module_and_builds_it_only_when_asked():
    module = types.ModuleType("my_proj.settings_local")
    exec(compile(block(cluster(), "app1"), SETTINGS, "exec"), module.__dict__)
    assert module.CELERY_WORKER_CONSUMER == "my_proj.settings_local:FabceleryConsumer"
    # any other name is missing, as in a plain module: Celery is not imported for it
    with pytest.raises(AttributeError, match="'my_proj.settings_local' has no attribute 'OTHER'"):
        module.OTHER      # noqa: B018
    # `from .settings_local import *` (as Arches' settings.py does) exports no helper of the block
    public = {name for name in module.__dict__ if not name.startswith("_")}
    assert public == {name for name in public if name.isupper()}
