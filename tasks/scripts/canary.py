"""fab check on one host of the project: a canary through each queue, and who took it.

Run as the project user by the virtualenv's Python, isolated (-I), from no directory of the
project's: it imports Celery and kombu, never the project's code.

    python -I -c SCRIPT SETTINGS_FILE BEGIN_MARKER END_MARKER TIMEOUT EXPECTED_NODES QUEUE...

The broker's settings come from fabcelery's block of SETTINGS_FILE (settings_local.py): its
assignments are read as literals (ast), never run. Into each QUEUE goes one message of
Celery's own task protocol for the built-in task `celery.chord_unlock` (shown as
`fabcelery.check` in the workers' logs), sent through the broker's default exchange, already
expired: whichever worker takes it discards it at once, unrun and unstored (that task ignores
its result, so neither Celery 5.3 nor later stores a REVOKED state), acknowledges it, and
keeps its id in its list of revoked tasks. `celery inspect revoked` (a broadcast through the
broker's remote-control mailbox, as `celery inspect ping`) then tells which node took it:
asked over and over until each canary is found or TIMEOUT seconds have passed.

A canary nobody took is taken out of its queue: on Redis by LREM of exactly that message
(found by its id), on RabbitMQ by its per-message TTL (TIMEOUT), after which the broker drops
it; either way it never runs, being expired.

Prints one JSON document (the last line): {"nodes": [...], "queues": {QUEUE: {"id", "node",
"ms"}}, "removed": {QUEUE: bool}} or {"error": ...}. The broker's password is never printed.
"""
from __future__ import annotations

import ast
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlsplit

TASK = "celery.chord_unlock"      # a built-in of every Celery app, with ignore_result=True
SHOWN_AS = "fabcelery.check"      # its name in the workers' logs (the protocol's `shadow`)
POLL_TIMEOUT = 1.0                # one `inspect revoked`: how long it waits for replies
FIRST_POLL = 0.5                  # the first one waits for every node that answers
PAUSE = (0.02, 0.25)              # between two polls: from this, doubling, up to that
REDIS_PAGE = 500


def block_settings(text: str, begin: str, end: str) -> dict:
    """The CELERY_* assignments of fabcelery's block, as Celery's setting names (lower case,
    without the prefix), read as literals (what is not a literal is left out). ValueError when
    the block is missing or sets no broker URL."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError("has no fabcelery block (fab deploy writes it)")
    settings = {}
    for node in ast.parse(text[start:stop]).body:
        # the block of a cluster also holds its worker consumer (code, not a literal): only
        # the literal CELERY_... assignments are settings this check reads
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not name.startswith("CELERY_"):
            continue
        try:
            settings[name[len("CELERY_"):].lower()] = ast.literal_eval(node.value)
        except ValueError:
            continue
    if not settings.get("broker_url"):
        raise ValueError("sets no CELERY_BROKER_URL in its block")
    return settings


def secrets_of(url: str) -> list[str]:
    """The passwords of a broker URL (several, ';'-separated), as written and unquoted."""
    found = []
    for part in str(url).split(";"):
        password = urlsplit(part.strip()).password
        if password:
            found += [password, unquote(password), quote(unquote(password), safe="")]
    return sorted({s for s in found if s}, key=len, reverse=True)


def masked(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def expired_at(now: datetime) -> datetime:
    """A canary's expiry: a day before it is sent, so that no clock between here and a worker
    can make it fresh."""
    return now - timedelta(days=1)


def found_in(replies: dict | None, pending: dict[str, str]) -> dict[str, str]:
    """{canary id: node} for each pending canary that a node's revoked list names."""
    found = {}
    for node, ids in (replies or {}).items():
        for task_id in ids if isinstance(ids, list) else []:
            if task_id in pending and task_id not in found:
                found[task_id] = node
    return found


def canary_message(app, queue: str, task_id: str, now: datetime):
    return app.amqp.create_task_message(task_id, TASK, (), {}, expires=expired_at(now), ignore_result=True,
                                        shadow=SHOWN_AS, argsrepr=f"(canary for {queue})", kwargsrepr="{}")


def remove_from_redis(app, conn, queue: str, task_id: str) -> bool:
    """LREM exactly the message of this canary from the queue's list (paged from its head,
    where kombu pushes); True when it was there and is gone."""
    prefix = (app.conf.broker_transport_options or {}).get("global_keyprefix", "")
    client = conn.default_channel.client

    def execute(command, *args):
        # kombu's client puts the prefix in front of the keys of the commands it knows itself
        known = command in getattr(client, "PREFIXED_SIMPLE_COMMANDS", ()) or \
            command in getattr(client, "PREFIXED_COMPLEX_COMMANDS", {})
        return client.execute_command(command, queue if known else prefix + queue, *args)

    start = 0
    while True:
        items = execute("LRANGE", start, start + REDIS_PAGE - 1)
        if not items:
            return False
        for item in items:
            try:
                headers = json.loads(item).get("headers") or {}
            except (ValueError, AttributeError):
                continue
            if headers.get("id") == task_id:
                return bool(execute("LREM", 1, item))
        start += REDIS_PAGE


def run(settings: dict, timeout: float, expected_nodes: int, queues: list[str]) -> dict:
    from celery import Celery
    from kombu import Producer

    app = Celery("fabcelery-check", set_as_current=False)
    app.conf.update(settings)
    app.conf.update(broker_connection_timeout=min(4.0, timeout), result_backend=None)
    redis = str(settings["broker_url"]).startswith(("redis", "rediss"))
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5, timeout=timeout)
        inspect = app.control.inspect
        # who answers at all (and how many to wait for from now on)
        first = inspect(timeout=FIRST_POLL, connection=conn).revoked() or {}
        nodes = sorted(first)
        limit = len(nodes) or max(1, expected_nodes)
        producer = Producer(conn.default_channel)
        pending, sent, ids = {}, {}, {}
        for queue in queues:
            task_id = ids[queue] = str(uuid.uuid4())
            message = canary_message(app, queue, task_id, datetime.now(UTC))
            sent[task_id] = time.monotonic()
            producer.publish(message.body, exchange="", routing_key=queue, headers=message.headers,
                             serializer="json", retry=True, retry_policy={"max_retries": 3},
                             expiration=timeout, **message.properties)
            pending[task_id] = queue
        deadline = max(sent.values(), default=time.monotonic()) + timeout
        taken, pause = {}, PAUSE[0]
        while pending and time.monotonic() < deadline:
            wait = max(0.05, min(POLL_TIMEOUT, deadline - time.monotonic()))
            replies = inspect(timeout=wait, limit=limit, connection=conn).revoked()
            now = time.monotonic()
            for task_id, node in found_in(replies, pending).items():
                taken[task_id] = {"node": node, "ms": int((now - sent[task_id]) * 1000)}
                del pending[task_id]
            if pending:   # the workers answer each poll: not more than a few a second once it takes a while
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, PAUSE[1])
        if pending:   # a node that did not answer the quick polls (one more than before, a late one)
            replies = inspect(timeout=POLL_TIMEOUT, connection=conn).revoked()
            now = time.monotonic()
            for task_id, node in found_in(replies, pending).items():
                taken[task_id] = {"node": node, "ms": int((now - sent[task_id]) * 1000)}
                del pending[task_id]
            nodes = sorted(set(nodes) | set(replies or {}))
    removed = {}
    if pending and redis:
        # a connection of its own: the one above may be waiting in a BRPOP for the mailbox's replies
        with app.connection_for_write() as conn:
            for task_id, queue in pending.items():
                removed[queue] = remove_from_redis(app, conn, queue, task_id)
    return {"nodes": nodes, "transport": "redis" if redis else "amqp",
            "queues": {queue: {"id": task_id, **taken.get(task_id, {"node": None, "ms": None})}
                       for queue, task_id in ids.items()},
            "removed": removed}


def main(argv: list[str]) -> int:
    path, begin, end, timeout, expected, *queues = argv
    secrets: list[str] = []
    try:
        try:
            with open(path, encoding="utf-8") as f:
                settings = block_settings(f.read(), begin, end)
        except (OSError, ValueError, SyntaxError) as exc:
            print(json.dumps({"error": f"{path} {exc.strerror if isinstance(exc, OSError) else exc}"}))
            return 1
        secrets = secrets_of(settings["broker_url"])
        document = run(settings, float(timeout), int(expected), queues)
    except Exception as exc:  # noqa: BLE001 - one line for the user, never a traceback (with a password)
        print(json.dumps({"error": masked(f"{type(exc).__name__}: {exc}", secrets)}))
        return 1
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
