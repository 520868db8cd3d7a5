"""inventory.yaml validation: a clear message naming the file and key, or a usable inventory."""

import re
from pathlib import Path

import pytest
import yaml

from tasks.inventory import HostSpec, InventoryError
from tasks.inventory_load import load_inventory, parse_inventory

from .conftest import inventory_data, make_inventory


def problem(**changes) -> str:
    with pytest.raises(InventoryError) as caught:
        make_inventory(**changes)
    return str(caught.value)


def test_the_example_inventory_loads():
    inventory = load_inventory(Path(__file__).resolve().parents[2] / "inventory.yaml")
    assert inventory.project.name == "demo_proj"
    assert inventory.celery.app == "demo_proj.celery"
    assert inventory.hosts["demo"].roles == ("broker", "worker", "beat")
    assert list(inventory.celery.pools) == ["celery", "exports"]           # make demo shows two pools
    assert inventory.hosts["demo"].pools == ("celery", "exports")


def test_defaults():
    inventory = make_inventory()
    assert inventory.celery.app == "my_proj.celery"
    assert inventory.project.group == "arches"
    assert (inventory.celery.concurrency, inventory.celery.stopwaitsecs) == (2, 600)
    assert inventory.versions == {"celery": "5.7.0", "supervisor": "4.3.0"}


def test_misspelt_key_is_named_with_a_suggestion():
    message = problem(celery__concurency=4)
    assert message.startswith("inventory.yaml: 'celery.concurency' is not a known key; did you mean 'concurrency'?")
    assert message.endswith("nothing was changed.")


def test_unknown_top_level_key():
    assert "'brokers' is not a known key; did you mean 'broker'?" in problem(brokers={})


def test_missing_required_key():
    data = inventory_data()
    del data["project"]["path"]
    with pytest.raises(InventoryError, match="'project.path' is missing"):
        parse_inventory(data, Path("inv.yaml"))


def test_wrong_types():
    assert "'celery.concurrency' must be a whole number from 1 to 256, not a str" in problem(celery__concurrency="4")
    assert "'hosts.prod.port' must be from 1 to 65535; got 0" in problem(hosts__prod__port=0)
    assert "'hosts.prod.roles' must be a non-empty list" in problem(hosts__prod__roles="worker")


@pytest.mark.parametrize("key,value", [
    ("project__path", "/opt/x;rm -rf /"),
    ("project__path", "/opt/x\n[program:evil]"),
    ("project__path", "relative/path"),
    ("project__path", "/opt/x/../y"),
    ("project__name", "my-proj"),
    ("project__user", "Arches; true"),
    ("celery__app", "my_proj.celery worker"),
])
def test_values_that_would_break_a_config_file_or_a_shell_are_refused(key, value):
    assert f"'{key.replace('__', '.')}' must be" in problem(**{key: value})


def test_unknown_role_and_broker_kind():
    assert "unknown role 'wrker'" in problem(hosts__prod__roles=["broker", "wrker", "beat"])
    assert "'broker.kind' must be one of redis, rabbitmq; got 'kafka'" in problem(broker__kind="kafka")


def test_two_beat_hosts_are_refused():
    message = problem(hosts={"a": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.1"},
                             "b": {"roles": ["worker", "beat"]}})
    assert "exactly one host" in message and "a, b all have it" in message


def test_workers_without_a_broker_are_refused():
    assert "has workers but no host with the role broker" in problem(hosts={"a": {"roles": ["worker", "beat"]}})


def test_remote_workers_need_the_brokers_internal_address():
    message = problem(hosts={"mq": {"roles": ["broker"]}, "app": {"roles": ["worker", "beat"]}})
    assert "'hosts.mq.internal_address' is missing" in message


def test_all_problems_are_reported_at_once():
    message = problem(celery__concurrency=0, project__user="Bad User")
    assert "'project.user'" in message and "'celery.concurrency'" in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(InventoryError, match="no such file"):
        load_inventory(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: [unclosed\n")
    with pytest.raises(InventoryError, match=r"bad.yaml: is not valid YAML at line \d"):
        load_inventory(bad)


def test_selecting_hosts():
    inventory = make_inventory()
    assert [h.name for h in inventory.select([])] == ["prod"]
    assert inventory.select(["prod"])[0].address is None
    # not in an inventory that lists hosts: refused, naming the file and the hosts it knows
    with pytest.raises(InventoryError, match=r"inventory.yaml: -H other.example is not a host of this inventory, "
                                             r"whose hosts are prod\..*nothing was changed"):
        inventory.select(["prod", "other.example"])
    # an inventory without hosts: plain SSH destinations, each with every role
    hostless = make_inventory(hosts=None)
    assert hostless.hosts == {}
    assert hostless.select(["other.example"]) == [HostSpec(name="other.example")]


def test_log_rotation_defaults_and_settings():
    assert (make_inventory().logs.size, make_inventory().logs.keep) == ("100M", 14)
    logs = make_inventory(logs={"rotate": {"size": "512k", "keep": 30}}).logs
    assert (logs.size, logs.keep) == ("512k", 30)


@pytest.mark.parametrize("rotate,message", [
    ({"size": "100MB"}, "'logs.rotate.size' must be a size like 100M (bytes, or with k, M or G); got '100MB'"),
    ({"size": "1M\nmail evil@example.org"}, "'logs.rotate.size' must be a size like 100M"),
    ({"keep": 0}, "'logs.rotate.keep' must be from 1 to 1000; got 0"),
    ({"keeps": 3}, "'logs.rotate.keeps' is not a known key; did you mean 'keep'?"),
    ("daily", "'logs.rotate' must be a mapping like {size: 100M, keep: 14}, not a str"),
])
def test_bad_log_rotation_settings_are_named(rotate, message):
    assert message in problem(logs={"rotate": rotate})


@pytest.mark.parametrize("changes,message", [
    ({"broker__redis_default_user": "off"}, "'broker.redis_default_user' must be one of off-if-unused, off-anyway; "
                                            "got 'off'"),
    ({"broker__redis_default_user": True}, "'broker.redis_default_user' must be one of off-if-unused, off-anyway; "
                                           "got True"),
    ({"broker__kind": "rabbitmq", "broker__redis_default_user": "off-anyway"},
     "'broker.redis_default_user' applies only to a Redis that fabcelery sets up"),
    ({"broker__url": "redis://cache.example:6379/0", "broker__redis_default_user": "off-anyway", "hosts": {
        "app": {"roles": ["worker", "beat"]}}}, "'broker.redis_default_user' applies only to a Redis"),
])
def test_redis_default_user_is_one_of_its_values_and_only_for_a_redis_fabcelery_sets_up(changes, message):
    assert message in problem(**changes)


@pytest.mark.parametrize("value", ["off-if-unused", "off-anyway"])
def test_redis_default_user_values(value):
    assert make_inventory().broker.redis_default_user == "off-if-unused"
    assert make_inventory(broker__redis_default_user=value).broker.redis_default_user == value


def test_status_stalled_after_defaults_to_60_seconds_and_takes_a_number_of_seconds():
    assert make_inventory().status.stalled_after == 60
    assert make_inventory(status={"stalled_after": 5}).status.stalled_after == 5


@pytest.mark.parametrize("status,message", [
    ({"stalled_after": 0}, "'status.stalled_after' must be from 1 to 86400; got 0"),
    ({"stalled_after": "1m"}, "'status.stalled_after' must be a whole number from 1 to 86400, not a str"),
    ({"stalled_after": True}, "'status.stalled_after' must be a whole number from 1 to 86400, not true/false"),
    ({"staled_after": 5}, "'status.staled_after' is not a known key; did you mean 'stalled_after'?"),
    (60, "'status' must be a mapping"),
])
def test_bad_status_settings_are_named_with_the_file(status, message):
    text = problem(status=status)
    assert text.startswith("inventory.yaml: ") and message in text, text


# --- the README's examples ------------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_yaml(heading: str) -> str:
    """The first yaml block of the README's section `heading`."""
    section = README.read_text().split(f"\n## {heading}\n", 1)[1]
    return section.split("```yaml\n", 1)[1].split("\n```", 1)[0]


def test_the_readmes_inventory_example_loads_and_each_optional_key_it_comments_out_is_taken():
    block = readme_yaml("inventory.yaml")
    inventory = parse_inventory(yaml.safe_load(block), README)
    assert (inventory.project.group, inventory.project.requirements) == ("arches", "requirements.txt")
    assert list(inventory.celery.pools) == ["celery", "exports"] and inventory.hosts["prod"].pools == ("celery",
                                                                                                        "exports")
    assert inventory.hosts["prod"].internal_address == "10.0.0.5"
    # uncommented, each optional line loads too (broker.url with no broker host, consumer_timeout on RabbitMQ)
    commented = re.findall(r"^( *)# (\w+: \S+) +# optional", block, re.M)
    assert [line.split(":")[0] for _, line in commented] == ["redis_default_user", "url", "visibility_timeout",
                                                            "consumer_timeout"]
    fits = {"url": ("roles: [broker, worker, beat]", "roles: [worker, beat]"),
            "consumer_timeout": ("kind: redis ", "kind: rabbitmq ")}
    for indent, line in commented:
        old, new = fits.get(line.split(":")[0], ("", ""))
        text = re.sub(rf"^ *# {re.escape(line)} .*$", indent + line, block, flags=re.M).replace(old, new)
        parse_inventory(yaml.safe_load(text), README)


def test_the_readmes_pools_example_loads_with_every_option_it_shows():
    data = yaml.safe_load(readme_yaml("inventory.yaml"))
    pools = yaml.safe_load(readme_yaml("Worker pools"))
    data.update(celery=pools["celery"], hosts=pools["hosts"], broker={"kind": "redis", "url": "redis://mq:6379/0"})
    inventory = parse_inventory(data, README)
    exports = inventory.celery.pools["exports"]
    assert (exports.queues, exports.concurrency, exports.pool, exports.stopwaitsecs) == (("exports", "bulk"), 1,
                                                                                        "prefork", 3600)
    assert inventory.hosts["app2"].pools == ("exports",)


def test_the_readmes_fleet_example_loads_with_beat_on_one_host():
    data = yaml.safe_load(readme_yaml("inventory.yaml"))
    data.update(yaml.safe_load(readme_yaml("Brokers and fleets")))
    inventory = parse_inventory(data, README)
    assert {name: host.roles for name, host in inventory.hosts.items()} == {
        "mq1": ("broker",), "app1": ("worker", "beat"), "app2": ("worker",)}
