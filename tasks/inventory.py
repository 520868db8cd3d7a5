"""inventory.yaml's schema: what a parsed inventory holds (the contract in docs/inventory.md).

tasks/inventory_load.py reads and checks the file into these; tasks/inventory_check.py words its
problems (with did-you-mean), tasks/inventory_pools.py and tasks/inventory_hosts.py check the
pools, the hosts and the roles they make together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .bounds import DEFAULT as DEFAULT_BOUNDS
from .bounds import Bounds

ROLES = ("broker", "worker", "beat")
BROKER_KINDS = ("redis", "rabbitmq")
# broker.redis_default_user: turn Redis's passwordless default user off only when nothing
# else uses it (the deploy stops otherwise, tasks/shared_redis.py), or whatever uses it
REDIS_DEFAULT_USER = ("off-if-unused", "off-anyway")
DEFAULT_VERSIONS = {"celery": "5.7.0", "supervisor": "4.3.0"}

# Values end up in config files and shell commands: allow only what is plainly safe.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
ABS_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")
REL_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]*$")
UNIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_-]{0,252}$")
VERSION = re.compile(r"^[0-9][A-Za-z0-9.+!-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOGLEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
POOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
# The pool of an inventory without `pools:`, and the one whose program keeps today's names
# (program celery, NAME-programs.d/NAME-celeryd.conf, NAME-worker.log, node celery@HOST).
DEFAULT_POOL = "celery"
BEAT_PROGRAM = "celerybeat"
POOL_KINDS = ("prefork", "threads", "solo")
# set by fabcelery in every program's environment (templates/celeryd.conf.j2)
RESERVED_ENV = ("HOME", "USER", "PYTHONUNBUFFERED")
LOG_SIZE = re.compile(r"^[1-9][0-9]{0,5}[kMG]?$")   # logrotate's size: bytes, or k, M, G


MAX_STALLED_AFTER = 86400   # status.stalled_after: a day at most
# celery.watchdog.stalled_after: at least this (a worker starting, or a broker restarting, takes
# seconds; a restart every few seconds would be a loop, not a cure)
MIN_WATCHDOG_STALLED_AFTER = 20
MIN_WATCHDOG_INTERVAL = 5        # celery.watchdog.interval: the timer's period, seconds


class InventoryError(Exception):
    """The inventory cannot be used; the message says which file and key."""


@dataclass(frozen=True)
class Project:
    name: str
    path: str
    virtualenv: str
    user: str
    group: str
    requirements: str | None = None   # relative to path: the project's own pip requirements


@dataclass(frozen=True)
class Broker:
    kind: str = "redis"
    password_env: str = "FABCELERY_BROKER_PASSWORD"
    url: str | None = None
    # a RabbitMQ cluster's Erlang cookie: from this environment variable, else kept on the brokers
    cookie_env: str = "FABCELERY_ERLANG_COOKIE"
    redis_default_user: str = "off-if-unused"     # REDIS_DEFAULT_USER
    # seconds; None: derived from the pools and celery.max_eta (tasks/timeouts.py)
    visibility_timeout: int | None = None         # Redis (kombu's transport option)
    consumer_timeout: int | None = None           # a RabbitMQ that fabcelery sets up


@dataclass(frozen=True)
class Pool:
    """A worker pool: one supervisor program consuming its queues, with its own tuning."""

    name: str
    queues: tuple[str, ...] = ("celery",)
    explicit_queues: bool = False         # False: no -Q, the worker consumes the project's default queue
    concurrency: int | None = 2           # None with autoscale, or for a solo pool
    autoscale: tuple[int, int] | None = None   # (max, min)
    pool: str | None = None               # prefork (celery's default) | threads | solo
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None   # KiB
    prefetch_multiplier: int | None = None
    time_limit: int | None = None
    soft_time_limit: int | None = None
    stopwaitsecs: int = 600
    loglevel: str = "INFO"
    environment: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CelerySettings:
    app: str
    concurrency: int = 2
    stopwaitsecs: int = 600
    loglevel: str = "INFO"
    pools: dict[str, Pool] = field(default_factory=dict)   # in order; never empty once parsed
    max_eta: int | None = None    # seconds: the furthest countdown/ETA the project uses
    watchdog: Watchdog | None = None   # opt in: a systemd timer restarts a stalled pool (tasks/watchdog.py)


@dataclass(frozen=True)
class Watchdog:
    """celery.watchdog: each worker host's timer checks every `interval` seconds, and a pool
    stalled for `stalled_after` seconds (the stall rule of `fab status`) gets a warm restart,
    at most once per `stalled_after`."""

    stalled_after: int = 300
    interval: int = 60


@dataclass(frozen=True)
class LogSettings:
    """logrotate for every log fabcelery makes: rotated once past `size`, `keep` old ones kept."""

    size: str = "100M"
    keep: int = 14


@dataclass(frozen=True)
class StatusSettings:
    """`fab status`: how long a queue's messages may wait while the pools that should take it
    have free slots (or its workers are frozen) before it is NOT CONSUMED (tasks/scripts/stall_rule.py)."""

    stalled_after: int = 60


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str | None = None
    user: str | None = None
    port: int | None = None
    internal_address: str | None = None
    roles: tuple[str, ...] = ROLES
    pools: tuple[str, ...] | None = None   # the worker pools placed here; None: every pool

    @property
    def destination(self) -> str:
        return self.address or self.name

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class Inventory:
    path: Path
    project: Project
    broker: Broker
    celery: CelerySettings
    versions: dict[str, str]
    hosts: dict[str, HostSpec] = field(default_factory=dict)
    bounds: Bounds = DEFAULT_BOUNDS     # seconds: how long each kind of remote action may take
    logs: LogSettings = field(default_factory=LogSettings)
    status: StatusSettings = field(default_factory=StatusSettings)

    def select(self, names: list[str] | None) -> list[HostSpec]:
        """The hosts a task runs on: the named ones, or all of the inventory.

        When the inventory lists hosts, every name must be one of them: a typo must never
        become a second broker or beat. Only an inventory without hosts takes names as plain
        SSH destinations, each with every role.
        """
        if not names:
            return list(self.hosts.values())
        unknown = [name for name in names if name not in self.hosts]
        if self.hosts and unknown:
            which = "is not a host" if len(unknown) == 1 else "are not hosts"
            raise InventoryError(
                f"{self.path}: -H {', '.join(unknown)} {which} of this inventory, whose hosts are "
                f"{', '.join(self.hosts)}. Name hosts of the inventory (or use another inventory with "
                "FABCELERY_INVENTORY); nothing was changed."
            )
        return [self.hosts.get(name) or HostSpec(name=name) for name in names]

    def broker_host(self) -> HostSpec | None:
        """The broker host, or a RabbitMQ cluster's first (its seed)."""
        return next((h for h in self.hosts.values() if h.has("broker")), None)

    def broker_hosts(self) -> list[HostSpec]:
        return [h for h in self.hosts.values() if h.has("broker")]
