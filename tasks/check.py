"""Is work flowing? `fab check`: a canary through every queue of every pool, and who took it.

From one host of the project (the first of the hosts asked that has the project's code and
virtualenv), tasks/scripts/canary.py sends into each queue a message of Celery's own protocol
for a built-in task, already expired, so that the worker that takes it discards it unrun and
keeps its id among its revoked tasks; `celery inspect revoked` says which node that was, and
when. Deciding is pure: the inventory says which pools should take each queue; the script's
report says who did; one row per queue comes out, OK or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .programs import host_pools, inventory_queues

OK, NOT_TAKEN, WRONG_POOL, UNKNOWN = "OK", "NOT TAKEN", "WRONG POOL", "UNKNOWN"
CANARY_TASK = "celery.chord_unlock"     # tasks/scripts/canary.py: TASK


@dataclass(frozen=True)
class Canary:
    """A queue to check: the pools that should take its canary, and where the inventory puts them."""

    queue: str
    pools: tuple[str, ...]
    placements: tuple[str, ...]      # POOL@HOST, inventory host names


@dataclass(frozen=True)
class CheckRow:
    queue: str
    pools: tuple[str, ...]
    node: str | None                 # the worker node that took the canary
    ms: int | None                   # from sending it to seeing it taken
    state: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == OK


def canaries(inventory, pool: str | None = None) -> list[Canary]:
    """One canary per queue of the inventory's pools (or of one pool), in the inventory's order."""
    wanted = [q for q in inventory_queues(inventory) if pool is None or q in inventory.celery.pools[pool].queues]
    out = []
    for queue in wanted:
        pools = tuple(p.name for p in inventory.celery.pools.values() if queue in p.queues)
        placements = tuple(f"{p.name}@{h.name}" for h in inventory.hosts.values() for p in host_pools(inventory, h)
                           if p.name in pools)
        out.append(Canary(queue, pools, placements))
    return out


def expected_nodes(inventory) -> int:
    """How many worker nodes the inventory runs: the script waits for that many answers at first."""
    return sum(len(host_pools(inventory, h)) for h in inventory.hosts.values())


def check_hosts(inventory, hosts: list) -> list:
    """The hosts the check may run from, in order: those with a worker or beat (the project's code,
    its virtualenv and settings_local.py are there)."""
    return [h for h in hosts if h.has("worker") or h.has("beat")]


def report_of(text: str) -> dict:
    """The script's JSON document: its last line that starts with '{' (Celery may warn before)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                break
            if isinstance(value, dict):
                return value
            break
    return {"error": "no report: " + (" | ".join(text.strip().splitlines()[-3:]) or "no output")}


def pool_of(node: str) -> str:
    """The pool of a worker node: fabcelery names each pool's worker POOL@HOST."""
    return node.partition("@")[0]


def check_rows(planned: list[Canary], report: dict, timeout: int) -> list[CheckRow]:
    """Each queue's row, from what the script found (tasks/scripts/canary.py's document)."""
    answering = [str(n) for n in report.get("nodes") or []]
    found = report.get("queues") or {}
    removed = report.get("removed") or {}
    rabbitmq = report.get("transport") == "amqp"
    rows = []
    for canary in planned:
        seen = found.get(canary.queue)
        if not isinstance(seen, dict):
            rows.append(CheckRow(canary.queue, canary.pools, None, None, UNKNOWN, "no canary was sent"))
            continue
        node, ms = seen.get("node"), seen.get("ms")
        if node and pool_of(node) in canary.pools:
            rows.append(CheckRow(canary.queue, canary.pools, node, ms, OK))
        elif node:
            rows.append(CheckRow(canary.queue, canary.pools, node, ms, WRONG_POOL,
                                 f"taken by {node} of the pool {pool_of(node)}, which should not consume "
                                 f"{canary.queue} (only {_names(canary.pools) or 'no pool'} should)"))
        else:
            rows.append(CheckRow(canary.queue, canary.pools, None, None, NOT_TAKEN,
                                 _not_taken(canary, answering, timeout, removed.get(canary.queue), rabbitmq)))
    return rows


def _names(names) -> str:
    return ", ".join(names)


def _not_taken(canary: Canary, answering: list[str], timeout: int, removed, rabbitmq: bool) -> str:
    if not canary.pools:
        why = f"nobody took it within {timeout} s: no pool of the inventory consumes {canary.queue}"
    else:
        alive = [n for n in answering if pool_of(n) in canary.pools]
        why = f"nobody took it within {timeout} s: "
        if not alive:
            where = _names(canary.placements) or "no host"
            why += (f"no worker of {_names(canary.pools)} answers (it should run as {where}): "
                    f"fab status; fab start-celery --pool {canary.pools[0]}")
        else:
            why += (f"{_names(alive)} answer{'s' if len(alive) == 1 else ''} but took nothing from "
                    f"{canary.queue}: fab status, fab logs --pool {pool_of(alive[0])}")
    if rabbitmq:
        gone = f"RabbitMQ drops the canary (its time to live, {timeout} s, is over)"
    elif removed:
        gone = "the canary was taken out of the queue"
    else:
        gone = "the canary is no longer in the queue"
    return f"{why}; {gone}"


def check_table(rows: list[CheckRow], color: bool = False) -> str:
    header = ("QUEUE", "POOL", "TAKEN BY", "ROUND TRIP", "RESULT")
    cells = [(r.queue, _names(r.pools) or "-", r.node or "-", "-" if r.ms is None else f"{r.ms} ms",
              r.state + (f": {r.detail}" if r.detail else "")) for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...], ok: bool | None) -> str:
        out = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        last = row[-1]
        if color and ok is not None:
            code = "32" if ok else "31"
            last = f"\033[{code}m{last}\033[0m"
        return "  ".join([*out, last]).rstrip()

    return "\n".join([line(header, None), *(line(c, r.ok) for c, r in zip(cells, rows, strict=True))])


def check_document(rows: list[CheckRow], host: str | None, error: str | None = None) -> dict:
    """`fab check --json`: per queue the pools that should take it, the node (and its pool) that
    took it, the round trip in milliseconds, the result; `from`: the host it ran from; `error`:
    why it could not run (then no queue was checked)."""
    return {"ok": error is None and bool(rows) and all(r.ok for r in rows), "from": host, "error": error,
            "queues": [{"queue": r.queue, "pools": list(r.pools), "node": r.node,
                        "pool": pool_of(r.node) if r.node else None, "round_trip_ms": r.ms, "state": r.state,
                        "detail": r.detail or None, "ok": r.ok} for r in rows]}


def failure_summary(rows: list[CheckRow]) -> str:
    """The last line when a queue failed: each one, and why in a word."""
    bad = [r for r in rows if not r.ok]
    if not bad:
        return ""
    parts = [f"{r.queue} (taken by {r.node})" if r.state == WRONG_POOL else f"{r.queue} ({r.state.lower()})"
             for r in bad]
    return f"fab check: {len(bad)} of {len(rows)} queue{'s' if len(rows) > 1 else ''} failed: {', '.join(parts)}"
