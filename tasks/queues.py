"""Is work flowing? The queues that the inventory's pools consume, as `fab status` shows them.

The broker host's status script reads each queue's length (tasks/scripts/status-redis.sh: one
redis-cli as the project's account, `LLEN NAME:QUEUE` per queue and `HLEN NAME:unacked`);
the consumers come from the workers' own status rows (a pool's program RUNNING on a host
that the inventory places it on), never from `celery inspect` (seconds, on every status).
RabbitMQ counts them itself: `rabbitmqctl list_queues` on a host of its own
(status-rabbitmq.sh), and on each node of a cluster a passive queue.declare per queue over
AMQP (tasks/scripts/amqp_queues.py, in status-cluster.sh).
Deciding is pure: counts and rows in, one row per queue out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .broker_host import manages_broker
from .inventory import Inventory
from .programs import host_pools, inventory_queues
from .scripts.stall_rule import Consumer, judge

IDLE, FLOWING, NOT_CONSUMED, UNKNOWN = "IDLE", "FLOWING", "NOT CONSUMED", "UNKNOWN"


@dataclass(frozen=True)
class BrokerCounts:
    """What the broker said: each queue's waiting messages (None: not readable) and the
    messages taken and not yet acknowledged, over all the project's queues (Redis keeps one
    hash for them; None: not readable)."""
    waiting: dict[str, int | None]
    unacked_total: int | None = None
    consumers: dict[str, int] | None = None     # RabbitMQ counts each queue's consumers itself
    unacked: dict[str, int | None] | None = None  # and its unacknowledged messages


@dataclass(frozen=True)
class QueueRow:
    name: str
    waiting: int | None
    consumers: tuple[str, ...]          # POOL@HOST of every pool program RUNNING that consumes it
    expected: tuple[str, ...]           # POOL@HOST of every placement the inventory gives it
    state: str
    detail: str = ""
    consumer_count: int | None = None   # the broker's own count (RabbitMQ); None: len(consumers)
    unacked: int | None = None          # the broker's count for this queue (RabbitMQ); None: not told
    oldest: int | None = None           # seconds the oldest waiting message has been seen waiting (Redis)
    culprits: tuple[str, ...] = ()      # POOL@HOST that run and do not take it (tasks/scripts/stall_rule.py)

    @property
    def consumer_total(self) -> int:
        return len(self.consumers) if self.consumer_count is None else self.consumer_count

    @property
    def ok(self) -> bool:
        return self.state != NOT_CONSUMED


def parse_redis_counts(inventory: Inventory, text: str | None) -> BrokerCounts | None:
    """redis-cli's answers, one line each: PONG, then LLEN per queue, then HLEN of unacked.
    A line that is not a count (an error, a missing line) leaves that figure unknown."""
    if text is None:
        return None
    lines = text.strip().splitlines()[1:]
    queues = inventory_queues(inventory)
    counts = [_count(lines[i]) if i < len(lines) else None for i in range(len(queues) + 1)]
    return BrokerCounts(dict(zip(queues, counts, strict=False)), counts[len(queues)])


def parse_rabbitmq_counts(inventory: Inventory, text: str | None) -> BrokerCounts | None:
    """`rabbitmqctl list_queues name messages_ready messages_unacknowledged consumers
    --formatter json`: a JSON list of the vhost's queues. A queue not declared yet holds
    nothing and has no consumer; an answer that is not that list (the node only answered
    the ping) leaves every figure unknown."""
    if text is None:
        return None
    queues = inventory_queues(inventory)
    unknown = BrokerCounts({q: None for q in queues})
    try:
        raw = json.loads(text[text.find("["):]) if "[" in text else None
    except ValueError:
        return unknown
    if not isinstance(raw, list):
        return unknown
    found = {str(q.get("name")): q for q in raw if isinstance(q, dict)}

    def number(queue: str, key: str) -> int | None:
        value = found.get(queue, {}).get(key, 0)
        return value if isinstance(value, int) and value >= 0 else None

    waiting = {q: number(q, "messages_ready") for q in queues}
    unacked = {q: number(q, "messages_unacknowledged") for q in queues}
    known = [v for v in unacked.values() if v is not None]
    return BrokerCounts(waiting, sum(known) if len(known) == len(queues) else None,
                        {q: number(q, "consumers") or 0 for q in queues}, unacked)


def parse_amqp_counts(inventory: Inventory, text: str | None) -> BrokerCounts | None:
    """A cluster node's answer over AMQP (tasks/scripts/amqp_queues.py): the JSON list of the
    queues that exist, each with its ready messages and consumers. A passive queue.declare does
    not tell the unacknowledged messages: unknown. An answer that is not that list leaves every
    figure unknown."""
    counts = parse_rabbitmq_counts(inventory, text)
    if counts is None or counts.consumers is None:
        return counts
    return BrokerCounts(counts.waiting, None, counts.consumers, None)


def _count(line: str) -> int | None:
    line = line.strip().removeprefix("(integer) ")
    return int(line) if line.isdigit() else None


def queue_state(waiting: int | None, consumers: int, unknown_consumers: bool = False) -> str:
    """IDLE: nothing waits; NOT CONSUMED: messages wait and no worker consumes the queue;
    FLOWING: messages wait and a worker consumes it; UNKNOWN: the broker's count could not be
    read, or no consumer was seen but some hosts that should consume it were not asked."""
    if waiting is None:
        return UNKNOWN
    if waiting == 0:
        return IDLE
    if consumers:
        return FLOWING
    return UNKNOWN if unknown_consumers else NOT_CONSUMED


def queue_rows(inventory: Inventory, statuses: list) -> list[QueueRow] | None:
    """One row per queue, from the hosts' statuses (tasks/status.py HostStatus): None when
    no broker host of this inventory was asked (`-H` named only workers, or an external broker).
    On a RabbitMQ cluster, the counts of the first node (inventory order) that could read them
    all: a node down does not lose the view."""
    asked = {s.host: s for s in statuses}
    brokers = [asked[h.name] for h in inventory.hosts.values() if manages_broker(inventory, h) and h.name in asked]
    if not brokers:
        return None
    readable = [b for b in brokers if not b.error and b.queue_counts is not None
                and None not in b.queue_counts.waiting.values()]
    broker = readable[0] if readable else brokers[0]
    counts: BrokerCounts | None = None if broker.error else broker.queue_counts
    stall = (broker.stall or {}) if not broker.error else {}
    now = stall.get("now")
    rows = []
    for queue in inventory_queues(inventory):
        expected, consumers, not_asked, stall_consumers = [], [], [], []
        for host in inventory.hosts.values():
            for pool in host_pools(inventory, host):
                if queue not in pool.queues:
                    continue
                where = f"{pool.name}@{host.name}"
                expected.append(where)
                status = asked.get(host.name)
                if status is None:
                    not_asked.append(where)
                elif not status.error and any(
                        r.state == "RUNNING" and (r.name == pool.name or r.name.startswith(pool.name + ":"))
                        for r in status.programs):
                    consumers.append(where)
                    stall_consumers.append(Consumer(where, True, _frozen_since(status, pool.name, now)))
        waiting = counts.waiting.get(queue) if counts else None
        # the broker's own count where it keeps one (RabbitMQ); else the pools running
        count = counts.consumers.get(queue, 0) if counts and counts.consumers is not None else None
        unacked = counts.unacked.get(queue) if counts and counts.unacked is not None else None
        state = queue_state(waiting, len(consumers) if count is None else count,
                            bool(not_asked) and count is None)
        detail = _detail(state, expected, not_asked, waiting is None)
        history = (stall.get("queues") or {}).get(queue) if now is not None else None
        culprits: tuple[str, ...] = ()
        if state == FLOWING and history and not not_asked:
            verdict = judge(history, stall_consumers, now, inventory.status.stalled_after)
            if verdict.stalled:
                state, culprits = NOT_CONSUMED, verdict.culprits
                detail = f"{verdict.reason}; it should be taken by {', '.join(expected)}"
        head_since = history.get("head_since") if history else None
        oldest = int(now - head_since) if head_since is not None and waiting else None
        rows.append(QueueRow(queue, waiting, tuple(consumers), tuple(expected), state, detail, count, unacked,
                             oldest, culprits))
    return rows


def _frozen_since(status, pool: str, now: float | None) -> float | None:
    """Since when (on the broker host's clock) every program of the pool on this host has had
    its main process stopped; None: one runs (or nothing is known)."""
    stall = status.stall or {}
    programs = stall.get("programs") or {}
    found = [h for name, h in programs.items() if name == pool or name.startswith(pool + ":")]
    if now is None or not found or any(h.get("frozen_since") is None for h in found):
        return None
    age = stall["now"] - max(h["frozen_since"] for h in found)   # this host's clock: an age
    return now - age


def mark_programs(statuses: list, rows: list[QueueRow] | None) -> list:
    """The program rows of the workers that run and do not take their queue's tasks: FROZEN
    (main process stopped) or NOT-TAKING, with the queue named (not a bare RUNNING)."""
    from dataclasses import replace
    culprits: dict[str, list[QueueRow]] = {}
    for row in rows or []:
        for where in row.culprits:
            culprits.setdefault(where, []).append(row)
    if not culprits:
        return statuses
    out = []
    for status in statuses:
        programs = []
        for p in status.programs:
            pool = p.name.split(":")[0]
            queues = culprits.get(f"{pool}@{status.host}")
            if p.state == "RUNNING" and queues:
                frozen = (((status.stall or {}).get("programs") or {}).get(p.name) or {}).get("frozen_since")
                names = ", ".join(f"{q.name} ({q.waiting} waiting)" for q in queues)
                p = replace(p, state="FROZEN" if frozen is not None else "NOT-TAKING",
                            detail=(f"supervisor says RUNNING, but its main process {p.pid} is stopped (SIGSTOP): "
                                    if frozen is not None else "supervisor says RUNNING, but it takes no tasks: ")
                            + f"{names} not consumed")
            programs.append(p)
        out.append(replace(status, programs=tuple(programs)))
    return out


def _detail(state: str, expected: list[str], not_asked: list[str], unread: bool) -> str:
    if unread:
        return "the broker's counts could not be read"
    if state == NOT_CONSUMED:
        return ("messages wait and no worker consumes them: "
                + (f"start {', '.join(expected)} (fab start-celery)" if expected else "no pool consumes this queue"))
    if state == UNKNOWN:
        return f"not asked: {', '.join(not_asked)}"
    return ""


def queues_ok(rows: list[QueueRow] | None) -> bool:
    return all(r.ok for r in rows or [])


def queue_document(rows: list[QueueRow] | None, unacked_total: int | None) -> dict | None:
    if rows is None:
        return None
    return {"unacked_total": unacked_total,
            "queues": [{"name": r.name, "waiting": r.waiting, "oldest_waiting_seconds": r.oldest,
                        "unacked": r.unacked, "consumers": r.consumer_total, "not_taking": list(r.culprits),
                        "consumed_by": list(r.consumers), "expected": list(r.expected), "state": r.state,
                        "detail": r.detail or None, "ok": r.ok} for r in rows]}


def queue_table(rows: list[QueueRow], unacked_total: int | None, color: bool = False) -> str:
    per_queue = any(r.unacked is not None for r in rows)
    header = ("QUEUE", "WAITING", "OLDEST", *(("UNACKED",) if per_queue else ()), "CONSUMERS", "STATE", "DETAIL")
    cells = [(r.name, "?" if r.waiting is None else str(r.waiting), "-" if r.oldest is None else f"{r.oldest}s",
              *(("?" if r.unacked is None else str(r.unacked),) if per_queue else ()),
              f"{r.consumer_total}" + (f" ({', '.join(r.consumers)})" if r.consumers else ""), r.state, r.detail)
             for r in rows]
    state = header.index("STATE")
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...], ok: bool | None) -> str:
        out = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        if color and ok is not None:
            out[state] = f"\033[{'32' if ok else '31'}m{out[state]}\033[0m"
        return "  ".join([*out, row[-1]]).rstrip()

    unacked = "?" if unacked_total is None else str(unacked_total)
    return "\n".join([line(header, None), *(line(c, r.ok) for c, r in zip(cells, rows, strict=True)),
                      f"taken and not yet acknowledged (all queues): {unacked}"])
