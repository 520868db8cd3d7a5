"""celery.pools: each worker pool's settings, and the cross-key checks among them (limits
against stopwaitsecs, what works with which pool kind)."""

from __future__ import annotations

from typing import Any

from .inventory import (
    BEAT_PROGRAM,
    DEFAULT_POOL,
    ENV_NAME,
    LOGLEVELS,
    POOL_KINDS,
    POOL_NAME,
    QUEUE_NAME,
    RESERVED_ENV,
    CelerySettings,
    Pool,
)
from .inventory_check import Checker, type_name

POOL_KEYS = {
    "queues": "the queues it consumes (-Q)", "concurrency": "", "autoscale": "[max, min]",
    "pool": "prefork | threads | solo", "max_tasks_per_child": "", "max_memory_per_child": "KiB",
    "prefetch_multiplier": "", "time_limit": "seconds", "soft_time_limit": "seconds", "stopwaitsecs": "",
    "environment": "", "loglevel": "",
}


def parse_pools(check: Checker, raw: Any, defaults: CelerySettings) -> dict[str, Pool]:
    """celery.pools; without it, one pool named celery on the default queue (as before pools)."""
    if raw is None:
        return {DEFAULT_POOL: Pool(DEFAULT_POOL, concurrency=defaults.concurrency,
                                   stopwaitsecs=defaults.stopwaitsecs, loglevel=defaults.loglevel)}
    if not isinstance(raw, dict) or not raw:
        check.problem("celery.pools", "must map pool names to their settings, like {celery: {queues: [celery]}}")
        return {DEFAULT_POOL: Pool(DEFAULT_POOL)}
    pools = {}
    for name, spec in raw.items():
        key = f"celery.pools.{name}"
        if not isinstance(name, str) or not POOL_NAME.fullmatch(name):
            check.problem(key, "is not a usable pool name: a plain identifier (letters, digits, _; up to 32), as "
                               "it names a supervisor program and the worker's node POOL@HOST")
            continue
        if name == BEAT_PROGRAM:
            check.problem(key, f"is not a usable pool name: {BEAT_PROGRAM} is the beat program's name")
            continue
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            check.problem(key, f"must be a mapping, not {type_name(spec)}")
            continue
        check.unknown_keys(spec, key, POOL_KEYS)
        pools[name] = _parse_pool(check, name, key, spec, defaults)
    return pools or {DEFAULT_POOL: Pool(DEFAULT_POOL)}


def _parse_pool(check: Checker, name: str, key: str, spec: dict, defaults: CelerySettings) -> Pool:
    queues = spec.get("queues", [name])
    if (not isinstance(queues, list) or not queues
            or not all(isinstance(q, str) and QUEUE_NAME.fullmatch(q) for q in queues)):
        check.problem(f"{key}.queues", "must be a non-empty list of queue names (letters, digits, '_', '.', '-')")
        queues = [name]
    elif len(set(queues)) != len(queues):
        check.problem(f"{key}.queues", "names a queue twice")
    kind = spec.get("pool")
    if kind is not None and kind not in POOL_KINDS:
        check.problem(f"{key}.pool", f"must be one of {', '.join(POOL_KINDS)}; got {kind!r}")
        kind = None
    number = lambda field, low, high: check.integer(spec.get(field), f"{key}.{field}", low, high, None)  # noqa: E731
    concurrency = number("concurrency", 1, 256)
    autoscale = _autoscale(check, spec.get("autoscale"), f"{key}.autoscale")
    if autoscale and concurrency:
        check.problem(key, "sets both concurrency and autoscale: give one (autoscale: [max, min] varies the "
                           "number of processes, concurrency fixes it)")
    limits = {field: number(field, 1, high) for field, high in (
        ("max_tasks_per_child", 10**6), ("max_memory_per_child", 2**31), ("time_limit", 7 * 86400),
        ("soft_time_limit", 7 * 86400))}
    prefetch = number("prefetch_multiplier", 0, 1024)
    if kind in ("threads", "solo"):
        for field, value in (("autoscale", autoscale), ("max_tasks_per_child", limits["max_tasks_per_child"]),
                             ("max_memory_per_child", limits["max_memory_per_child"])):
            if value:
                check.problem(f"{key}.{field}", f"works with the prefork pool only, not {kind}")
    if kind == "solo" and concurrency:
        check.problem(f"{key}.concurrency", "cannot be set for a solo pool: it runs one task at a time")
    hard, soft = limits["time_limit"], limits["soft_time_limit"]
    if hard and soft and soft >= hard:
        check.problem(f"{key}.soft_time_limit", f"({soft}) must be shorter than time_limit ({hard}): the soft "
                                                "limit warns the task before the hard one kills it")
    stopwaitsecs = number("stopwaitsecs", 1, 86400) or defaults.stopwaitsecs
    if hard and stopwaitsecs < hard:
        check.problem(f"{key}.stopwaitsecs", f"({stopwaitsecs}) is shorter than time_limit ({hard}): a warm "
                                             "shutdown would kill tasks still allowed to run; make it at least "
                                             "as long as the longest task")
    loglevel = str(spec.get("loglevel", defaults.loglevel)).upper()
    if loglevel not in LOGLEVELS:
        check.problem(f"{key}.loglevel", f"must be one of {', '.join(LOGLEVELS)}")
        loglevel = defaults.loglevel
    return Pool(
        name=name,
        queues=tuple(queues),
        explicit_queues=True,
        concurrency=None if autoscale or kind == "solo" else (concurrency or defaults.concurrency),
        autoscale=autoscale,
        pool=kind,
        prefetch_multiplier=prefetch,
        stopwaitsecs=stopwaitsecs,
        loglevel=loglevel,
        environment=_environment(check, spec.get("environment"), f"{key}.environment"),
        **limits,
    )


def _autoscale(check: Checker, value: Any, key: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2 or not all(type(v) is int for v in value)
            or not 1 <= value[0] <= 256 or not 0 <= value[1] <= value[0]):
        check.problem(key, f"must be [max, min] processes, 1 <= max <= 256 and 0 <= min <= max; got {value!r}")
        return None
    return value[0], value[1]


def _environment(check: Checker, value: Any, key: str) -> tuple[tuple[str, str], ...]:
    """Extra variables of a pool's program; the values go inside double quotes in supervisor's
    `environment=` line, so neither quotes nor line breaks can be allowed in them."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        check.problem(key, f"must be a mapping of variable names to values, not {type_name(value)}")
        return ()
    items = []
    for name, raw in value.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            check.problem(f"{key}.{name}", "is not a usable variable name (letters, digits, _)")
            continue
        if name in RESERVED_ENV:
            check.problem(f"{key}.{name}", f"is set by fabcelery for every program ({', '.join(RESERVED_ENV)})")
            continue
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            check.problem(f"{key}.{name}", f"must be a string or a number, not {type_name(raw)}")
            continue
        text = str(raw)
        if any(c in text for c in "\"'") or any(ord(c) < 32 or ord(c) == 127 for c in text):
            check.problem(f"{key}.{name}", "must not hold quotes, line breaks or other control characters "
                                           f"(they would break supervisor's environment= line); got {text!r}")
            continue
        items.append((name, text))
    return tuple(items)
