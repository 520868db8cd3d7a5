"""A Redis that serves others: facts of the probe's survey in -> the host stopped (with what
paragraph) or the deploy going on; where the probe surveys, and what it costs elsewhere."""

from __future__ import annotations

import pytest

from tasks.deploy import plan_deploy, probe_spec
from tasks.probe import parse_probe, probe_script
from tasks.redis_broker import OLD_REDIS_FRAGMENT, REDIS_CONF, REDIS_DEFAULT_OFF
from tasks.shared_redis import read_signs, shared_redis_problem
from tasks.target import Target

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of

OWN_ID = "15"


def clients(*lines: str) -> str:
    """`CLIENT ID` (the probe's connection, id 15) then `CLIENT LIST` as Redis prints them."""
    own = f"id={OWN_ID} addr=127.0.0.1:50408 laddr=127.0.0.1:6379 fd=13 name= db=0 cmd=client|list user=default"
    return "\n".join([OWN_ID, *lines, own]) + "\n"


SUBSCRIBER = "id=8 addr=127.0.0.1:58966 laddr=127.0.0.1:6379 fd=12 name= db=1 sub=1 cmd=subscribe user=default"
APP_CLIENT = "id=9 addr=10.0.0.7:41000 laddr=10.0.0.5:6379 fd=14 name=web db=0 cmd=get user=default"
ACL_CLIENT = "id=10 addr=127.0.0.1:41001 laddr=127.0.0.1:6379 fd=15 name= db=0 cmd=get user=alice"
KEYSPACE = "# Keyspace\ndb0:keys=4,expires=0,avg_ttl=0\ndb1:keys=3000,expires=0,avg_ttl=0,subexpiry=0"
QUIET = {"ping": "PONG", "requirepass": "0\n", "fragments": "", "clients": clients(), "users": "default\n",
         "keyspace": "# Keyspace"}


def survey(**changes) -> dict[str, str]:
    return {**QUIET, **changes}


# (what the survey printed, what the paragraph says (all of it), what it must not say)
STOPS = [
    (survey(keyspace=KEYSPACE, **{"db:0": "4 my_proj\n", "db:1": "990 shop\n10 \n"}),
     ["in db 1 (1000 of 1000 keys sampled, 3000 in all)", "such as my_proj:"], ["db 0", "client"]),
    (survey(keyspace=KEYSPACE, **{"db:0": "2 my_proj\n2 \n"}),
     ["in db 0 (2 of 4 keys sampled, 4 in all)"], ["db 1"]),
    (survey(clients=clients(SUBSCRIBER)),
     ["1 client connected as the default user (127.0.0.1:58966)"], ["50408", "keys"]),
    (survey(clients=clients(SUBSCRIBER, APP_CLIENT, ACL_CLIENT)),
     ["2 clients connected as the default user (127.0.0.1:58966, 10.0.0.7:41000)"], ["41001"]),
    (survey(clients=clients(*[f"id={i} addr=10.0.0.{i}:5000 user=default" for i in range(20, 27)])),
     ["7 clients connected as the default user (10.0.0.20:5000, 10.0.0.21:5000, 10.0.0.22:5000, 10.0.0.23:5000, "
      "10.0.0.24:5000 and 2 more)"], ["10.0.0.25"]),
    ({"ping": "NOAUTH Authentication required.", "requirepass": "1\n", "fragments": ""},
     [f"a requirepass in {REDIS_CONF}"], ["asks for a password"]),
    ({"ping": "NOAUTH Authentication required.", "requirepass": "0\n", "fragments": ""},
     ["a default user that asks for a password"], ["requirepass"]),
    (survey(users="default\nalice\nmy_proj\n"), ["ACL users that fabcelery did not make (alice)"], ["my_proj)"]),
]


@pytest.mark.parametrize("found,says,not_said", STOPS)
def test_a_sign_of_another_user_stops_the_host_before_anything_changes(found, says, not_said):
    inventory = make_inventory()
    host = inventory.hosts["prod"]
    facts = fresh_facts(packages={"redis-server": True}, redis_survey=found)
    steps = plan_deploy(Target.of(inventory, host), facts, PASSWORD)
    assert [s.name for s in steps] == ["preflight"] and steps[0].error and not steps[0].actions
    message = steps[0].error
    assert message.startswith("Redis on this host serves others besides fabcelery's projects: ")
    for text in [*says, "would turn Redis's default user off (user default off in /etc/redis/redis.conf",
                 "'NOAUTH Authentication required.'", "give them accounts of their own",
                 "`broker: {redis_default_user: off-anyway}` in inventory.yaml"]:
        assert text in message
    for text in not_said:
        assert text not in message
    assert "\n" not in message                  # one paragraph


GOES = [
    ("nothing else uses it", {}, survey(keyspace=KEYSPACE, **{"db:0": "4 my_proj\n"})),
    ("the probe's own connection", {}, survey()),
    ("the keys, users and clients of fabcelery's projects",
     {}, survey(fragments="/etc/redis/fabcelery-other_proj.conf\n", users="default\nother_proj\n",
                clients=clients(ACL_CLIENT.replace("alice", "other_proj")),
                keyspace=KEYSPACE, **{"db:0": "2 my_proj\n2 other_proj\n"})),
    ("no Redis running (nothing to ask)", {}, {"ping": "Could not connect to Redis at 127.0.0.1:6379: Connection "
                                                       "refused", "requirepass": "0\n", "fragments": ""}),
    ("no Redis here yet (the survey did not run)", {}, {}),
    ("the default user is already off", {"lines": {(REDIS_CONF, REDIS_DEFAULT_OFF): True}},
     survey(clients=clients(SUBSCRIBER))),
    ("an earlier fabcelery set this Redis up", {"checksums": {OLD_REDIS_FRAGMENT: "ab" * 32}},
     {"ping": "NOAUTH Authentication required.", "requirepass": "0\n", "fragments": ""}),
]


@pytest.mark.parametrize("why,facts,found", GOES, ids=[g[0] for g in GOES])
def test_the_deploy_goes_on(why, facts, found):
    inventory = make_inventory()
    host = inventory.hosts["prod"]
    facts = fresh_facts(packages={"redis-server": True}, redis_survey=found, **facts)
    assert shared_redis_problem(Target.of(inventory, host), facts) == ""
    steps = plan_deploy(Target.of(inventory, host), facts, PASSWORD)
    assert [s.name for s in steps][:2] == ["system", "broker"]


def test_with_the_setting_it_goes_on_whatever_the_survey_found():
    inventory = make_inventory(broker__redis_default_user="off-anyway")
    host = inventory.hosts["prod"]
    facts = fresh_facts(packages={"redis-server": True}, redis_survey=STOPS[3][0])
    assert shared_redis_problem(Target.of(inventory, host), facts) == ""
    steps = plan_deploy(Target.of(inventory, host), facts, PASSWORD)
    broker = next(s for s in steps if s.name == "broker")
    assert any(a.summary.startswith("turn off Redis's passwordless default user") for a in broker.actions)


def test_signs_count_only_what_is_not_fabcelerys():
    signs = read_signs(make_inventory(), survey(
        fragments="/etc/redis/fabcelery-other_proj.conf\n", users="default\nother_proj\nalice\n",
        keyspace=KEYSPACE, clients=clients(SUBSCRIBER, ACL_CLIENT),
        **{"db:0": "1 my_proj\n1 other_proj\n2 celery\n", "db:1": "3 \n"}))
    assert [(d.db, d.foreign, d.sampled, d.keys) for d in signs.dbs] == [(0, 2, 4, 4), (1, 3, 3, 3000)]
    assert signs.clients == ("127.0.0.1:58966",) and signs.users == ("alice",)
    assert not signs.requirepass and not signs.password


# --- where the probe surveys, and what it costs elsewhere ---------------------------------


@pytest.mark.parametrize("changes,host,surveys", [
    ({}, "prod", True),
    ({"broker__redis_default_user": "off-anyway"}, "prod", False),     # accepted: nothing to ask
    ({"broker__kind": "rabbitmq"}, "prod", False),
    ({"hosts": {"mq": {"roles": ["broker"], "internal_address": "10.0.0.5"}, "app": {"roles": ["worker", "beat"]}}},
     "app", False),                                                      # not the broker host
    ({"hosts": {"mq": {"roles": ["broker"], "internal_address": "10.0.0.5"}, "app": {"roles": ["worker", "beat"]}}},
     "mq", True),
])
def test_the_probe_surveys_only_a_redis_broker_host(changes, host, surveys):
    inventory = make_inventory(**changes)
    spec = probe_spec(target_of(inventory, host))
    assert (spec.redis_survey is not None) == surveys
    assert ("redis_survey " in probe_script(spec)) == surveys


def test_the_survey_costs_no_command_where_the_default_user_is_off():
    """The one check of redis.conf's line decides: the line is there, or Redis is surveyed."""
    inventory = make_inventory()
    script = probe_script(probe_spec(target_of(inventory)))
    gate = [line for line in script.splitlines() if "redis_survey /etc/redis/redis.conf" in line]
    assert len(gate) == 1
    assert gate[0].startswith("if grep -qxF 'user default off' /etc/redis/redis.conf 2>/dev/null; then kv line:")
    assert script.count("grep -qxF 'user default off'") == 1


def test_a_probe_of_a_deployed_host_reads_no_survey():
    inventory = make_inventory()
    facts = parse_probe("@@end 0 \n")
    assert facts.redis_survey == {}
    assert shared_redis_problem(target_of(inventory), deployed_facts(inventory)) == ""


def test_the_surveys_sections_become_facts():
    lines = [f"@@survey:{name} 0 {value}" for name, value in
             (("ping", "UE9ORw=="), ("db:1", "MyBzaG9wCg=="))]
    facts = parse_probe("\n".join([*lines, "@@end 0 "]))
    assert facts.redis_survey == {"ping": "PONG", "db:1": "3 shop\n"}
