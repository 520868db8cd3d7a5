"""Is a queue stalled? The one rule, shared by `fab status` and the watchdog (issue 20, 21).

Standard library only: it is imported locally (tasks/queues.py, the unit tests) and run on the
servers by the system's Python (`/usr/bin/python3 -I -S stall_rule.py ...`, as root), where it
keeps the history the rule needs in a small JSON state file, so that `fab status` stays one
command per host and the watchdog needs nothing else.

The rule. A queue is stalled (NOT CONSUMED) when messages wait in it and no worker takes them:
  - no program of the pools that should consume it is RUNNING (at once: nothing to wait for); or
  - every such program that runs has had its main process stopped (SIGSTOP, a tracer's stop:
    /proc/PID/stat says T or t) for `stalled_after` seconds; or
  - the pools that should take it have had free slots for `stalled_after` seconds while its
    messages waited: in every observation over that time the queue had messages waiting and
    none of the messages of those pools' queues was held by a consumer (taken and not yet
    acknowledged), and, where the broker shows the oldest waiting message (Redis), it was the
    same message all along (nothing was taken from the queue).
Every slot taken is not a stall: a pool busy with long tasks holds its next messages (Celery's
prefetch: a worker whose slots are all busy keeps up to concurrency x prefetch_multiplier
messages taken and not acknowledged), so a backlog behind busy workers is FLOWING however
long its oldest message waits. (A worker with prefetch disabled would hold none: not supported.)

Interface (stable; everything JSON-able so that the history goes into a file):

  QueueSample(queue, waiting, held, head)      what the broker says of one queue at one moment:
      waiting: messages ready (None: unknown); held: messages of the queues of the pools
      consuming it that a consumer holds, taken and not yet acknowledged (None: unknown);
      head: a token of the oldest waiting message (None: the broker does not show it).
  advance_queue(previous, sample, now) -> dict  the queue's history after this observation:
      {"waiting": int|None, "head": str|None, "head_since": float|None (since when that oldest
      message has been seen waiting: its age as observed), "free_since": float|None (since when
      messages have waited with free slots, per the rule above)}. previous: the last history
      (None or {} for none).
  advance_program(previous, pid, proc_state, now) -> dict  a worker program's history:
      {"pid": int|None, "proc_state": str|None, "frozen_since": float|None}; proc_state is the
      state letter of /proc/PID/stat (None: not running / not readable); a new pid starts afresh.
  Consumer(where, running, frozen_since)        a program that should take the queue: POOL@HOST,
      RUNNING in supervisor, and its program history's frozen_since.
  judge(history, consumers, now, stalled_after) -> Verdict(stalled, reason, since, culprits)
      the rule itself: history from advance_queue, the consumers the inventory expects.
      reason is one sentence; culprits: the POOL@HOST that run and do not take the queue.
  proc_state(pid) -> str|None                   the state letter of /proc/PID/stat.
  load_state(path) -> dict / save_state(path, state)   the state file: {"queues": {name:
      history}, "programs": {name: history}}; unreadable or missing: {} (start afresh);
      written to a new file renamed onto it.

On a server (status-stall.sh; the watchdog imports the functions), one run per `fab status`:
  stall_rule.py STATE NOW [KIND POOLS QUEUES...]
      stdin: the supervisorctl status lines of the host (none: no programs here), then, with
      KIND, a line `@@broker` and the broker's answer, as KIND says:
        redis     the Redis answers of status-redis.sh (tasks/queues.py redis_keys order: PING,
                  LLEN per queue, HLEN unacked, then LINDEX QUEUE -1 per queue, then HVALS unacked)
        rabbitmq  `rabbitmqctl list_queues name messages_ready messages_unacknowledged consumers
                  --formatter json`
        amqp      a cluster node's answer over AMQP (amqp_queues.py: ready messages and consumers;
                  the messages held unknown, so no free-slot part)
POOLS: `POOL=Q1,Q2;POOL2=Q3` (each pool's queues); NOW: epoch seconds ("-": the clock).
It prints one JSON object: {"now": NOW, "programs": {...}, "queues": {...}} (the histories it
advanced), and updates STATE (a half it was given nothing for is kept).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import namedtuple

FROZEN_STATES = ("T", "t")     # /proc/PID/stat: stopped (SIGSTOP), stopped by a tracer

# Named tuples, not dataclasses: `dataclasses` imports `inspect`, 12 ms of a server's CPU at
# every `fab status` and every watchdog run (python3 -X importtime); `collections` comes with json.
# QueueSample(queue: str, waiting: int | None, held: int | None, head: str | None)
QueueSample = namedtuple("QueueSample", "queue waiting held head", defaults=(None, None))
# Consumer(where: POOL@HOST, running: supervisor says RUNNING, frozen_since: float | None)
Consumer = namedtuple("Consumer", "where running frozen_since", defaults=(None,))
# Verdict(stalled: bool, reason: str, since: since when the queue has not been consumed,
#         culprits: the POOL@HOST that run and do not take it)
Verdict = namedtuple("Verdict", "stalled reason since culprits", defaults=("", None, ()))


def advance_queue(previous: dict | None, sample: QueueSample, now: float) -> dict:
    previous = previous or {}
    waiting = sample.waiting
    if not waiting:         # empty, or unknown: no history to carry
        return {"waiting": waiting, "head": None, "head_since": None, "free_since": None}
    same_head = sample.head is not None and previous.get("head") == sample.head
    head_since = previous.get("head_since") if same_head else (now if sample.head is not None else None)
    # progress: the oldest waiting message changed (it was taken) -> the free time starts again
    moved = sample.head is not None and previous.get("head") is not None and not same_head
    free = sample.held == 0
    free_since = None
    if free:
        carried = previous.get("free_since")
        free_since = carried if carried is not None and previous.get("waiting") and not moved else now
    return {"waiting": waiting, "head": sample.head, "head_since": head_since, "free_since": free_since}


def advance_program(previous: dict | None, pid: int | None, proc_state: str | None, now: float) -> dict:
    previous = previous or {}
    frozen = pid is not None and proc_state in FROZEN_STATES
    carried = previous.get("frozen_since") if previous.get("pid") == pid else None
    return {"pid": pid, "proc_state": proc_state, "frozen_since": (carried if carried is not None else now)
            if frozen else None}


def judge(history: dict | None, consumers: list[Consumer], now: float, stalled_after: float) -> Verdict:
    history = history or {}
    waiting = history.get("waiting")
    if not waiting:
        return Verdict(False)
    running = [c for c in consumers if c.running]
    if not running:
        return Verdict(True, "messages wait and no program of the pools that should take them is RUNNING")
    frozen = [c for c in running if c.frozen_since is not None and now - c.frozen_since >= stalled_after]
    if len(frozen) == len(running):
        since = max(c.frozen_since for c in frozen)
        return Verdict(True, f"messages wait and the main process of {', '.join(c.where for c in frozen)} has been "
                             f"stopped (frozen) for {_seconds(now - since)}", since, tuple(c.where for c in frozen))
    free_since = history.get("free_since")
    if free_since is not None and now - free_since >= stalled_after:
        taking = tuple(c.where for c in running if c not in frozen)
        return Verdict(True, f"messages have waited for {_seconds(now - free_since)} while "
                             f"{', '.join(taking)} had free slots (they hold none of its messages): "
                             f"they run and do not take its tasks", free_since, tuple(c.where for c in running))
    return Verdict(False)


def _seconds(value: float) -> str:
    return f"{int(value)} s"


def proc_state(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 1:].split()
    return rest[0] if rest else None


def load_state(path: str) -> dict:
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_state(path: str, state: dict) -> None:
    new = f"{path}.new"
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(new, path)


# --- reading the brokers' and supervisor's answers (run on the servers) ---------------------


def parse_pools(text: str) -> dict[str, list[str]]:
    """`POOL=Q1,Q2;POOL2=Q3` -> {POOL: [Q1, Q2], POOL2: [Q3]}."""
    pools: dict[str, list[str]] = {}
    for part in text.split(";"):
        name, _, queues = part.partition("=")
        if name:
            pools[name] = [q for q in queues.split(",") if q]
    return pools


def pool_groups(pools: dict[str, list[str]], queues: list[str]) -> dict[str, set[str]]:
    """Each queue -> every queue of the pools that consume it (their messages share the slots)."""
    return {q: {x for qs in pools.values() if q in qs for x in qs} | {q} for q in queues}


def _count(line: str) -> int | None:
    line = line.strip().removeprefix("(integer) ")
    return int(line) if line.isdigit() else None


def redis_samples(text: str, queues: list[str], pools: dict[str, list[str]]) -> list[QueueSample]:
    """The Redis answers: PING, LLEN per queue, HLEN unacked, LINDEX -1 per queue, then
    HVALS unacked (kombu's values: [message, exchange, routing_key])."""
    lines = text.split("\n")
    n = len(queues)
    waiting = [_count(lines[1 + i]) if 1 + i < len(lines) else None for i in range(n)]
    heads = [lines[2 + n + i] if 2 + n + i < len(lines) else None for i in range(n)]
    held_by_key: dict[str, int] | None = {}
    if len(lines) < 2 + 2 * n:
        held_by_key = None
    else:
        for line in lines[2 + 2 * n:]:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                key = str(value[2])
            except (ValueError, IndexError, TypeError, KeyError):
                held_by_key = None
                break
            held_by_key[key] = held_by_key.get(key, 0) + 1
    groups = pool_groups(pools, queues)
    out = []
    for i, q in enumerate(queues):
        head = heads[i]
        token = hashlib.sha256(head.encode()).hexdigest()[:16] if head and head.strip() else None
        held = None if held_by_key is None else sum(held_by_key.get(x, 0) for x in groups[q])
        out.append(QueueSample(q, waiting[i], held, token))
    return out


def rabbitmq_samples(text: str, queues: list[str], pools: dict[str, list[str]]) -> list[QueueSample]:
    try:
        raw = json.loads(text[text.find("["):]) if "[" in text else None
    except ValueError:
        raw = None
    if not isinstance(raw, list):
        return [QueueSample(q, None) for q in queues]
    found = {str(q.get("name")): q for q in raw if isinstance(q, dict)}

    def number(queue: str, key: str) -> int | None:
        value = found.get(queue, {}).get(key, 0)
        return value if isinstance(value, int) and value >= 0 else None

    groups = pool_groups(pools, queues)
    out = []
    for q in queues:
        held = [number(x, "messages_unacknowledged") for x in groups[q]]
        out.append(QueueSample(q, number(q, "messages_ready"), None if None in held else sum(held)))
    return out


def amqp_samples(text: str, queues: list[str], pools: dict[str, list[str]]) -> list[QueueSample]:
    """A cluster node's answer over AMQP (amqp_queues.py: ready messages and consumers, as
    list_queues would give them): a passive queue.declare does not tell the messages held, so
    only the first two parts of the rule apply (no program running, every one frozen)."""
    return [QueueSample(s.queue, s.waiting) for s in rabbitmq_samples(text, queues, pools)]


def supervisor_pids(text: str) -> dict[str, int | None]:
    """supervisorctl status lines -> {program: pid of a RUNNING one, else None}."""
    pids: dict[str, int | None] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        pid = None
        if parts[1] == "RUNNING" and len(parts) >= 4 and parts[2] == "pid":
            digits = parts[3].rstrip(",")
            pid = int(digits) if digits.isdigit() else None
        pids[parts[0]] = pid
    return pids


SAMPLES = {"redis": redis_samples, "rabbitmq": rabbitmq_samples, "amqp": amqp_samples}
BROKER_MARK = "@@broker"        # the line between the supervisor lines and the broker's answer


def main(argv: list[str]) -> int:
    if len(argv) < 2 or (len(argv) > 2 and (argv[2] not in SAMPLES or len(argv) < 4)):
        print("usage: stall_rule.py STATE NOW [redis|rabbitmq|amqp POOLS QUEUES...]", file=sys.stderr)
        return 2
    path = argv[0]
    now = time.time() if argv[1] == "-" else float(argv[1])
    supervisor_text, _, broker_text = sys.stdin.read().partition(f"\n{BROKER_MARK}\n")
    state = load_state(path)
    out: dict = {"now": now}
    if supervisor_text.strip():
        before = state.get("programs") if isinstance(state.get("programs"), dict) else {}
        programs = {}
        for name, pid in supervisor_pids(supervisor_text).items():
            programs[name] = advance_program(before.get(name), pid, proc_state(pid), now)
        state["programs"] = out["programs"] = programs
    if len(argv) > 2:
        pools, queues = parse_pools(argv[3]), argv[4:]
        samples = SAMPLES[argv[2]](broker_text, queues, pools)
        before = state.get("queues") if isinstance(state.get("queues"), dict) else {}
        state["queues"] = out["queues"] = {s.queue: advance_queue(before.get(s.queue), s, now) for s in samples}
    try:
        save_state(path, state)
    except OSError as exc:
        out["error"] = f"{path}: {exc.strerror}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
