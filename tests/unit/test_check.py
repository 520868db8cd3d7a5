"""`fab check`, the pure parts: the canaries the inventory asks for, the rows that the script's
report gives (facts in -> rows out), the table and the failure line; and the script's own
helpers (the settings block read as literals, the password never shown, a canary found in a
node's revoked list, its expiry in the past)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.check import (
    NOT_TAKEN,
    OK,
    UNKNOWN,
    WRONG_POOL,
    Canary,
    canaries,
    check_document,
    check_hosts,
    check_rows,
    check_table,
    expected_nodes,
    failure_summary,
    report_of,
)
from tasks.configs import BEGIN_MARKER, END_MARKER
from tasks.inventory_load import parse_inventory
from tasks.operations import check_operation
from tasks.scripts import canary

from .conftest import BASE, target_of

POOLS = {"celery": {"queues": ["celery"]}, "exports": {"queues": ["exports", "bulk"]}}
FLEET = {"app1": {"roles": ["worker", "beat"], "pools": ["celery"]},
         "app2": {"roles": ["worker"], "pools": ["exports"]},
         "app3": {"roles": ["worker"], "pools": ["exports", "celery"]},
         "mq": {"roles": ["broker"], "internal_address": "10.0.0.9"}}


def inventory(hosts=FLEET, pools=POOLS):
    data = copy.deepcopy(BASE)
    data["celery"]["pools"] = pools
    data["hosts"] = hosts
    return parse_inventory(data, Path("inventory.yaml"))


def test_one_canary_per_queue_with_the_pools_and_hosts_that_should_take_it():
    assert canaries(inventory()) == [
        Canary("celery", ("celery",), ("celery@app1", "celery@app3")),
        Canary("exports", ("exports",), ("exports@app2", "exports@app3")),
        Canary("bulk", ("exports",), ("exports@app2", "exports@app3")),
    ]
    assert [c.queue for c in canaries(inventory(), "exports")] == ["exports", "bulk"]
    assert expected_nodes(inventory()) == 4


def test_it_runs_from_a_host_with_the_project_never_from_a_broker_only_host():
    inv = inventory()
    assert [h.name for h in check_hosts(inv, list(inv.hosts.values()))] == ["app1", "app2", "app3"]
    assert check_hosts(inv, [inv.hosts["mq"]]) == []


PLANNED = [Canary("celery", ("celery",), ("celery@app1",)), Canary("exports", ("exports",), ("exports@app2",))]


def found(celery=None, exports=None, nodes=("celery@app1", "exports@app2"), transport="redis", removed=None):
    def one(node):
        return {"id": "x", "node": node[0], "ms": node[1]} if node else {"id": "x", "node": None, "ms": None}
    return {"nodes": list(nodes), "transport": transport, "queues": {"celery": one(celery), "exports": one(exports)},
            "removed": removed or {}}


@pytest.mark.parametrize("report,states,detail", [
    # every canary taken by a worker of its own pool
    (found(("celery@app1", 12), ("exports@app2", 30)), [OK, OK], ""),
    # a worker of another pool took it: it consumes a queue it should not
    (found(("celery@app1", 12), ("celery@app1", 9)), [OK, WRONG_POOL],
     "taken by celery@app1 of the pool celery, which should not consume exports (only exports should)"),
    # nobody took it, and no worker of its pool answers (stopped): start it
    (found(("celery@app1", 12), None, nodes=["celery@app1"], removed={"exports": True}), [OK, NOT_TAKEN],
     "nobody took it within 30 s: no worker of exports answers (it should run as exports@app2): fab status; "
     "fab start-celery --pool exports; the canary was taken out of the queue"),
    # its pool answers but took nothing: running and not consuming
    (found(("celery@app1", 12), None, removed={"exports": False}), [OK, NOT_TAKEN],
     "nobody took it within 30 s: exports@app2 answers but took nothing from exports: fab status, fab logs "
     "--pool exports; the canary is no longer in the queue"),
    # RabbitMQ drops it by itself (its TTL)
    (found(None, ("exports@app2", 5), nodes=[], transport="amqp"), [NOT_TAKEN, OK],
     "nobody took it within 30 s: no worker of celery answers (it should run as celery@app1): fab status; "
     "fab start-celery --pool celery; RabbitMQ drops the canary (its time to live, 30 s, is over)"),
    # a queue the report does not have
    ({"nodes": [], "queues": {"celery": {"id": "x", "node": "celery@app1", "ms": 3}}}, [OK, UNKNOWN],
     "no canary was sent"),
])
def test_the_rows_from_the_report(report, states, detail):
    rows = check_rows(PLANNED, report, 30)
    assert [r.state for r in rows] == states
    assert next((r.detail for r in rows if r.detail), "") == detail
    assert [r.ok for r in rows] == [s == OK for s in states]


def test_the_table_and_the_failure_line():
    rows = check_rows(PLANNED, found(("celery@app1", 12), ("celery@app1", 9)), 30)
    assert check_table(rows).splitlines() == [
        "QUEUE    POOL     TAKEN BY     ROUND TRIP  RESULT",
        "celery   celery   celery@app1  12 ms       OK",
        "exports  exports  celery@app1  9 ms        WRONG POOL: taken by celery@app1 of the pool celery, which "
        "should not consume exports (only exports should)",
    ]
    assert failure_summary(rows) == "fab check: 1 of 2 queues failed: exports (taken by celery@app1)"
    assert failure_summary(rows[:1]) == ""


def test_the_json_document_per_queue_and_not_ok_when_one_failed():
    rows = check_rows(PLANNED, found(("celery@app1", 12), ("celery@app1", 9)), 30)
    document = json.loads(json.dumps(check_document(rows, "app1")))
    assert document == {"ok": False, "from": "app1", "error": None, "queues": [
        {"queue": "celery", "pools": ["celery"], "node": "celery@app1", "pool": "celery", "round_trip_ms": 12,
         "state": "OK", "detail": None, "ok": True},
        {"queue": "exports", "pools": ["exports"], "node": "celery@app1", "pool": "celery", "round_trip_ms": 9,
         "state": "WRONG POOL", "detail": rows[1].detail, "ok": False}]}
    taken = check_document(check_rows(PLANNED, found(("celery@app1", 12), ("exports@app2", 30)), 30), "app1")
    assert taken["ok"] is True and [q["pool"] for q in taken["queues"]] == ["celery", "exports"]
    nobody = check_document(check_rows(PLANNED, found(("celery@app1", 12), None, nodes=["celery@app1"]), 30), "app1")
    assert nobody["ok"] is False and nobody["queues"][1] | {"detail": None} == {
        "queue": "exports", "pools": ["exports"], "node": None, "pool": None, "round_trip_ms": None,
        "state": "NOT TAKEN", "detail": None, "ok": False}


def test_the_json_document_of_a_check_that_could_not_run_is_not_ok_and_says_why():
    assert check_document([], None, "cannot connect") == {"ok": False, "from": None, "error": "cannot connect",
                                                          "queues": []}


@pytest.mark.parametrize("text,report", [
    ('warning: something\n{"nodes": []}\n', {"nodes": []}),
    ('{"error": "no"}', {"error": "no"}),
    ("Traceback\n  boom\nValueError: x", {"error": "no report: Traceback |   boom | ValueError: x"}),
    ("", {"error": "no report: no output"}),
])
def test_the_report_is_the_last_json_line(text, report):
    assert report_of(text) == report


def test_the_operation_passes_every_value_as_an_argument_and_reads_an_error_as_a_failure():
    inv = inventory()
    op = check_operation(target_of(inv, "app1"), ["celery", "bulk"], 7)
    assert op.timeout == 67 and "2 canaries" in op.summary
    assert "celery.chord_unlock" in op.summary
    out = op.interpret("@@canary 1 " + __import__("base64").b64encode(b'{"error": "cannot reach"}').decode()
                       + "\n@@end 0 \n")
    assert out.failed == "the check could not run here: cannot reach"


BLOCK = f"""import os
X = 1
{BEGIN_MARKER}
# Written by `fab deploy`
CELERY_BROKER_URL = 'redis://demo:s%2Fecret@localhost:6379/0'
CELERY_BROKER_TRANSPORT_OPTIONS = {{"global_keyprefix": "demo:"}}
CELERY_ACCEPT_CONTENT = ["json"]
{END_MARKER}
Y = os.environ
"""


@pytest.mark.parametrize("text,settings", [
    (BLOCK, {"broker_url": "redis://demo:s%2Fecret@localhost:6379/0",
             "broker_transport_options": {"global_keyprefix": "demo:"}, "accept_content": ["json"]}),
    ("X = 1\n", "has no fabcelery block (fab deploy writes it)"),
    (f"{BEGIN_MARKER}\nimport os\n{END_MARKER}\n", "sets no CELERY_BROKER_URL"),
    (f"{BEGIN_MARKER}\nCELERY_BROKER_URL = os.environ['X']\n{END_MARKER}\n", "sets no CELERY_BROKER_URL"),
    # a cluster's block: its worker consumer is code, left out; the literals are read
    (f"{BEGIN_MARKER}\nCELERY_BROKER_URL = 'amqp://a'\nCELERY_WORKER_CONSUMER = __name__ + ':C'\n"
     f"def __getattr__(name):\n    raise AttributeError(name)\n{END_MARKER}\n", {"broker_url": "amqp://a"}),
    (f"{BEGIN_MARKER}\nCELERY_ACCEPT_CONTENT = ['json']\n{END_MARKER}\n", "sets no CELERY_BROKER_URL"),
])
def test_the_script_reads_the_block_as_literals_only(text, settings):
    if isinstance(settings, dict):
        assert canary.block_settings(text, BEGIN_MARKER, END_MARKER) == settings
    else:
        with pytest.raises(ValueError, match=settings.replace("(", r"\(").replace(")", r"\)")
                           .replace(".", r"\.")):
            canary.block_settings(text, BEGIN_MARKER, END_MARKER)


def test_the_script_never_shows_the_password_as_written_or_unquoted():
    secrets = canary.secrets_of("amqp://u:p%2Fw@a:5672/v;amqp://u:p%2Fw@b:5672/v")
    text = "cannot connect to amqp://u:p%2Fw@a (password p/w)"
    assert canary.masked(text, secrets) == "cannot connect to amqp://u:***@a (password ***)"


def test_a_canary_is_expired_before_it_is_sent_and_found_in_a_nodes_revoked_list():
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert canary.expired_at(now) < now
    pending = {"a": "celery", "b": "exports"}
    assert canary.found_in({"celery@h": ["z", "a"], "exports@h": ["b"], "odd@h": None}, pending) == \
        {"a": "celery@h", "b": "exports@h"}
    assert canary.found_in(None, pending) == {}
    assert json.dumps(canary.found_in({}, pending)) == "{}"
