"""The watchdog (celery.watchdog, issue 21): run by a systemd timer on each worker host, as the
project user, by the project's virtualenv Python (it asks the broker with the project's own
client libraries), it applies the stall rule of `fab status` (stall_rule.py, beside it) to
this host's pools and gives a stalled pool a warm restart through the project's supervisord.

    python -I watchdog.py CONFIG.json

CONFIG (written by the deploy, tasks/watchdog.py; no secret in it): the supervisorctl and
supervisord.conf to use, settings_local.py (the broker URL is read from fabcelery's block
there, never passed on a command line), the broker's kind and, for Redis, the keys; the pools
of this host with their programs, queues and logs; stalled_after; the state file.

Each run is one observation: the programs' pids and /proc states, each queue's counts; the
histories go into the state file (the project user's), with the last restart of each program.
A pool is restarted when the rule says one of its queues is stalled and names the pool's
program (frozen: its main process stopped; or it has had free slots while messages waited,
and this process has run for stalled_after: a worker still starting is given that time),
at most once per stalled_after per program. A busy pool holds messages (its prefetch) and is
never stalled by the rule; a program that is not RUNNING (stopped by hand, or restarting) is
left to supervisor. Each restart is printed (the journal, through the unit) and appended to
the pool's log.

The deciding is pure (observe, decide: tests/unit/test_watchdog.py); main() does the asking.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

try:
    from . import stall_rule
except ImportError:          # run as a file on the server: stall_rule.py lies beside it
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "stall_rule", os.path.join(os.path.dirname(os.path.abspath(__file__)), "stall_rule.py"))
    stall_rule = importlib.util.module_from_spec(_spec)
    sys.modules["stall_rule"] = stall_rule
    _spec.loader.exec_module(stall_rule)


@dataclass(frozen=True)
class Restart:
    program: str
    pool: str
    reason: str
    frozen: bool            # its main process is stopped: continued (SIGCONT) first, so it can shut down warm


def pool_of(program: str, pools: dict) -> str | None:
    """A supervisor program's pool: the pool's name, or GROUP:NAME of a pool's group."""
    for name in pools:
        if program == name or program.startswith(name + ":"):
            return name
    return None


def observe(state: dict, status_text: str, proc_states: dict, samples: list, now: float) -> dict:
    """The state after one observation: each program's and queue's history (stall_rule's own
    advance functions), the restarts kept."""
    before_programs = state.get("programs") if isinstance(state.get("programs"), dict) else {}
    before_queues = state.get("queues") if isinstance(state.get("queues"), dict) else {}
    programs = {}
    for name, pid in stall_rule.supervisor_pids(status_text).items():
        before = before_programs.get(name) or {}
        history = stall_rule.advance_program(before, pid, proc_states.get(pid), now)
        # since when this process has been seen: a worker just (re)started gets stalled_after too
        history["seen_since"] = before.get("seen_since", now) if before.get("pid") == pid and pid else \
            (now if pid else None)
        programs[name] = history
    queues = {s.queue: stall_rule.advance_queue(before_queues.get(s.queue), s, now) for s in samples}
    restarts = state.get("restarts") if isinstance(state.get("restarts"), dict) else {}
    return {"programs": programs, "queues": queues, "restarts": dict(restarts)}


def decide(state: dict, pools: dict, now: float, stalled_after: float) -> list[Restart]:
    """The programs to restart now. `pools`: {pool: [its queues]} of this host's pools. For each
    queue, the consumers are this host's RUNNING programs of the pools that take it (other hosts
    have their own watchdog; a message another host holds counts in `held`, so their work is
    never taken for a stall)."""
    programs = state.get("programs") or {}
    restarts = state.get("restarts") or {}
    found: dict[str, Restart] = {}
    for queue in dict.fromkeys(q for queues in pools.values() for q in queues):
        history = (state.get("queues") or {}).get(queue)
        local = {name: h for name, h in programs.items()
                 if (pool := pool_of(name, pools)) is not None and queue in pools[pool]}
        running = {name: h for name, h in local.items() if h.get("pid") is not None}
        if not running:
            continue         # stopped (by hand, or supervisor is restarting it): not the watchdog's business
        consumers = [stall_rule.Consumer(name, True, h.get("frozen_since")) for name, h in running.items()]
        verdict = stall_rule.judge(history, consumers, now, stalled_after)
        if not verdict.stalled:
            continue
        for name in verdict.culprits:
            last = (restarts.get(name) or {}).get("at")
            if name in found or (isinstance(last, (int, float)) and now - last < stalled_after):
                continue     # at most once per stalled_after per program
            seen = running[name].get("seen_since")
            if running[name].get("frozen_since") is None and (seen is None or now - seen < stalled_after):
                continue     # free slots, but this process has not run for stalled_after yet (starting)
            found[name] = Restart(name, pool_of(name, pools) or name, f"{queue}: {verdict.reason}",
                                  running[name].get("frozen_since") is not None)
    return list(found.values())


def record(state: dict, restart: Restart, pid: int | None, now: float, result: str) -> dict:
    restarts = dict(state.get("restarts") or {})
    restarts[restart.program] = {"at": now, "reason": restart.reason, "pid": pid, "result": result}
    return {**state, "restarts": restarts}


def log_line(restart: Restart, pid: int | None, now: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
    return (f"[{when},000: WARNING/fabcelery-watchdog] warm restart of {restart.program} (pid {pid}): "
            f"stalled: {restart.reason}")


# --- asking (on the server) --------------------------------------------------------------------


def block_settings(text: str, begin: str, end: str) -> dict:
    """The literal CELERY_ settings of fabcelery's block of settings_local.py (never run)."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        return {}
    found = {}
    for node in ast.parse(text[start:stop]).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


def redis_text(url: str, keys: list[str], unacked: str) -> str:
    """The answers, one a line, as redis-cli prints them for status-redis.sh (stall_rule.redis_samples)."""
    import redis

    client = redis.Redis.from_url(url.split(";")[0], socket_timeout=5, socket_connect_timeout=5)
    pipe = client.pipeline(transaction=False)
    pipe.ping()
    for key in keys:
        pipe.llen(key)
    pipe.hlen(unacked)
    for key in keys:
        pipe.lindex(key, -1)
    pipe.hvals(unacked)
    answers = pipe.execute()
    n = len(keys)
    text = lambda v: "" if v is None else v.decode(errors="replace") if isinstance(v, bytes) else str(v)  # noqa: E731
    lines = ["PONG", *(str(v) for v in answers[1:2 + n]), *(text(v) for v in answers[2 + n:2 + 2 * n])]
    lines += [text(v).replace("\n", " ") for v in answers[2 + 2 * n]]
    return "\n".join(lines)


def rabbitmq_text(url: str, options: dict, queues: list[str]) -> str:
    """Each queue's ready messages, as `rabbitmqctl list_queues --formatter json` would give
    them; the messages held are not told (a passive declare does not say): the free-slot part of
    the rule never applies, the frozen part does."""
    from kombu import Connection
    from kombu.exceptions import ChannelError

    rows = []
    with Connection(url, connect_timeout=5, transport_options=options) as connection:
        channel = connection.channel()
        for queue in queues:
            try:
                _, ready, _ = channel.queue_declare(queue=queue, passive=True)
            except ChannelError:          # not declared yet: nothing waits in it
                ready, channel = 0, connection.channel()
            rows.append({"name": queue, "messages_ready": ready, "messages_unacknowledged": None})
    return json.dumps(rows)


def samples(config: dict) -> list:
    with open(config["settings"]) as f:
        settings = block_settings(f.read(), config["begin"], config["end"])
    url = settings.get("CELERY_BROKER_URL")
    if not isinstance(url, str):
        raise RuntimeError(f"no CELERY_BROKER_URL in fabcelery's block of {config['settings']}")
    queues = config["queues"]
    pools = stall_rule.parse_pools(config["all_pools"])
    if config["kind"] == "redis":
        text = redis_text(url, [config["keys"][q] for q in queues], config["unacked"])
        return stall_rule.redis_samples(text, queues, pools)
    options = settings.get("CELERY_BROKER_TRANSPORT_OPTIONS")
    text = rabbitmq_text(url, options if isinstance(options, dict) else {}, queues)
    return stall_rule.rabbitmq_samples(text, queues, pools)


def ctl(config: dict, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([config["supervisorctl"], "-c", config["conf"], *args], capture_output=True, text=True,
                          timeout=timeout)


def append_log(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: watchdog.py CONFIG.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        config = json.load(f)
    status = ctl(config, "status", timeout=30)
    if status.returncode not in (0, 3) or not stall_rule.supervisor_pids(status.stdout):
        print(f"supervisord does not answer: {(status.stdout + status.stderr).strip()[:200]}")
        return 0                   # nothing to judge: supervisord is down or starting
    pids = stall_rule.supervisor_pids(status.stdout)
    try:
        found = samples(config)
    except Exception as exc:       # the broker down: nothing waits that the rule could see
        print(f"the broker's queues could not be read: {type(exc).__name__}: {exc}")
        found = []
    now = time.time()
    state = observe(stall_rule.load_state(config["state"]), status.stdout,
                    {pid: stall_rule.proc_state(pid) for pid in pids.values() if pid}, found, now)
    restarts = decide(state, config["pools"], now, config["stalled_after"])
    for restart in restarts:
        pid = pids.get(restart.program)
        line = log_line(restart, pid, now)
        print(line.split("] ", 1)[1], flush=True)     # in the journal now, not once the restart is done
        try:
            append_log(config["logs"][restart.pool], line)
        except (OSError, KeyError) as exc:
            print(f"cannot write to the pool's log: {exc}")
        # recorded first: a restart cut short still counts against stalled_after
        state = record(state, restart, pid, now, "restarting")
        stall_rule.save_state(config["state"], state)
        if restart.frozen:
            ctl(config, "signal", "CONT", restart.program, timeout=30)
        done = ctl(config, "restart", restart.program)
        result = (done.stdout + done.stderr).strip().replace("\n", "; ")
        print(f"{restart.program}: {result}", flush=True)
        state = record(state, restart, pid, now, result)
    stall_rule.save_state(config["state"], state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
