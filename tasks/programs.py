"""The table of programs: which supervisor programs run on a host, and all about each one.

Every other module reads this table (configs renders it, system makes its log files,
supervisor applies and verifies it, operations acts on it): none spells a program's name.
A worker pool (celery.pools in the inventory) is a program of its own, with its queues and
tuning; the pool named celery keeps the names fabcelery always used, so an existing
deployment sees no change. Beat, on its one host, is the last row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .inventory import BEAT_PROGRAM, DEFAULT_POOL, POOL_NAME, HostSpec, Inventory, Pool
from .layout import LEGACY_PROGRAMS_DIR, Layout

BEAT_STOPWAITSECS = 60        # templates/celerybeat.conf.j2
HANDBACK_GRACE = 30           # a worker's cold shutdown after its warm one (tasks/shutdown.py's GRACE)
NODE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


@dataclass(frozen=True)
class Program:
    name: str                     # supervisor's program name
    kind: str                     # "worker" | "beat"
    config: str                   # its file in /etc/supervisor/NAME-programs.d (layout.programs_dir)
    template: str
    log: str
    stopwaitsecs: int
    pool: Pool | None = None      # a worker's pool

    @property
    def is_worker(self) -> bool:
        return self.kind == "worker"

    @property
    def queues(self) -> tuple[str, ...]:
        return self.pool.queues if self.pool else ()

    def node(self, hostname: str) -> str:
        """The worker's node name, set with --hostname so `inspect ping -d` can name it."""
        return node_name(hostname, self.name)

    @property
    def worker_options(self) -> tuple[str, ...]:
        """The worker's options after --loglevel and before --hostname (templates/celeryd.conf.j2).
        The pool named celery without `pools:` gets exactly the options it always had."""
        pool = self.pool
        if pool is None:
            return ()
        options = []
        if pool.explicit_queues:
            options.append("--queues=" + ",".join(pool.queues))
        if pool.concurrency:
            options.append(f"--concurrency={pool.concurrency}")
        if pool.autoscale:
            options.append(f"--autoscale={pool.autoscale[0]},{pool.autoscale[1]}")
        for option, value in (("--pool", pool.pool), ("--max-tasks-per-child", pool.max_tasks_per_child),
                              ("--max-memory-per-child", pool.max_memory_per_child),
                              ("--prefetch-multiplier", pool.prefetch_multiplier),
                              ("--time-limit", pool.time_limit), ("--soft-time-limit", pool.soft_time_limit)):
            if value is not None:
                options.append(f"{option}={value}")
        return tuple(options)


def node_name(hostname: str, pool: str = DEFAULT_POOL) -> str:
    return f"{pool}@" + NODE_NAME_UNSAFE.sub("-", hostname)


def host_pools(inventory: Inventory, host: HostSpec) -> list[Pool]:
    """The worker pools of this host, in the inventory's order (none without the worker role)."""
    if not host.has("worker"):
        return []
    return [p for p in inventory.celery.pools.values() if host.pools is None or p.name in host.pools]


def pool_program(layout: Layout, pool: Pool) -> Program:
    return Program(pool.name, "worker", layout.pool_conf(pool.name), "celeryd.conf.j2", layout.pool_log(pool.name),
                   pool.stopwaitsecs, pool)


def beat_program(layout: Layout) -> Program:
    return Program(BEAT_PROGRAM, "beat", layout.celerybeat_conf, "celerybeat.conf.j2", layout.beat_log,
                   BEAT_STOPWAITSECS)


def programs_of(inventory: Inventory, layout: Layout, host: HostSpec) -> list[Program]:
    """This host's programs (a Target's table, tasks/target.py): a worker per pool placed here,
    then beat if it runs here."""
    programs = [pool_program(layout, p) for p in host_pools(inventory, host)]
    return programs + ([beat_program(layout)] if host.has("beat") else [])


def unwanted_programs(inventory: Inventory, layout: Layout, wanted: tuple[Program, ...]) -> list[Program]:
    """The inventory's programs that must not run on a host whose table is `wanted` (a pool
    placed elsewhere, beat moved to another host)."""
    names = {p.name for p in wanted}
    every = [pool_program(layout, p) for p in inventory.celery.pools.values()] + [beat_program(layout)]
    return [p for p in every if p.name not in names]


def program_of_config(layout: Layout, path: str) -> str | None:
    """The program a program file of ours defines, by its name (for files the inventory no longer names)."""
    return _program_of_name(layout.name, path, layout.programs_dir, strict=False)


def legacy_program(layout: Layout, path: str) -> str | None:
    """The program of a file that an earlier fabcelery put in /etc/supervisor/conf.d (by its
    exact name: NAME-celeryd.conf, NAME-celeryd-POOL.conf, NAME-celerybeat.conf); None for
    any other file there, which is not ours."""
    return _program_of_name(layout.name, path, LEGACY_PROGRAMS_DIR, strict=True)


def _program_of_name(name: str, path: str, directory: str, strict: bool) -> str | None:
    if path == f"{directory}/{name}-celeryd.conf":
        return DEFAULT_POOL
    if path == f"{directory}/{name}-celerybeat.conf":
        return BEAT_PROGRAM
    prefix, suffix = f"{directory}/{name}-celeryd-", ".conf"
    if path.startswith(prefix) and path.endswith(suffix):
        pool = path[len(prefix):-len(suffix)]
        return pool if POOL_NAME.fullmatch(pool) or (pool and not strict) else None
    return None


def legacy_program_files(layout: Layout, listed: tuple[str, ...]) -> dict[str, str]:
    """{file: program} of the files of a listing of /etc/supervisor/conf.d that an earlier
    fabcelery wrote (layout.legacy_programs_glob)."""
    return {path: program for path in sorted(listed) if (program := legacy_program(layout, path))}


def stop_seconds(programs: list[Program]) -> int:
    """The longest a stop of these programs may take: supervisord stops them one after another,
    a worker in its warm shutdown and, where it hands its tasks back (Celery 5.5 or later,
    tasks/shutdown.py), its cold one."""
    return sum(p.stopwaitsecs + (HANDBACK_GRACE if p.is_worker else 0) for p in programs)


def worker_nodes(programs: list[Program], hostname: str) -> list[str]:
    return [p.node(hostname) for p in programs if p.is_worker]


def inventory_queues(inventory: Inventory) -> list[str]:
    """Every queue a pool consumes, in the inventory's order (a pool without -Q: `celery`)."""
    names: list[str] = []
    for pool in inventory.celery.pools.values():
        names.extend(q for q in pool.queues if q not in names)
    return names
