"""inventory.yaml: loading and validation (the contract in docs/inventory.md).

Everything is checked before any host is touched; a problem becomes one
InventoryError naming the file and the key, and the task exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import timeouts
from .bounds import DEFAULT as DEFAULT_BOUNDS
from .bounds import KEYS as BOUND_KEYS
from .bounds import LIMITS as BOUND_LIMITS
from .bounds import MAX_BOUND, Bounds
from .refusals import (
    HOST_LIMIT,
    PATH_MAX,
    USER_LIMIT,
    Unreadable,
    cut,
    directory_problem,
    is_root,
    name_limit,
    node_name_problem,
    normal_path,
    path_problems,
    read_yaml,
)

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


ROOT_WHY = {
    "user": "supervisord and the Celery programs run as this user, who owns their virtualenv, logs and pid files, "
            "so it must never be root; name an unprivileged user such as arches (the deploy creates it if missing)",
    "group": "this group may read the broker password and write the project's logs, so it must never be root; "
             "name another group, or leave 'project.group' out (it defaults to the user's name)",
}
# The longest value a server takes, and why (for the patterns that have one).
LIMITS = {UNIX_NAME: USER_LIMIT, HOST_NAME: HOST_LIMIT, ADDRESS: HOST_LIMIT}


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


def inventory_path(base_dir: Path) -> Path:
    """inventory.yaml beside the fabfile, or the file FABCELERY_INVENTORY names."""
    named = os.environ.get("FABCELERY_INVENTORY")
    return Path(named) if named else base_dir / "inventory.yaml"


def load_inventory(path: Path) -> Inventory:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InventoryError(
            f"{path}: no such file. Write an inventory there (see inventory.yaml in "
            "the fabcelery repository) or name one with FABCELERY_INVENTORY."
        ) from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot be read ({exc.strerror}).") from None
    try:
        data, lines = read_yaml(raw)
    except Unreadable as exc:
        raise InventoryError(_paragraph(path, [str(exc)])) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise InventoryError(f"{path}: is not valid YAML{line}: {getattr(exc, 'problem', exc)}.") from None
    return parse_inventory(data, path, lines)


class _Checker:
    """Collects every problem in one pass, so the user fixes them all at once."""

    def __init__(self, path: Path, lines: dict[str, int] | None = None):
        self.path = path
        self.lines = lines or {}    # where each key is in the file (dotted, as the problems name them)
        self.problems: list[str] = []

    def problem(self, key: str, message: str, shown: str | None = None) -> None:
        """`shown`: the key as the message names it, when `key` itself is too long to show."""
        line = self.lines.get(key)
        where = f"line {line}: " if line else ""
        self.problems.append(f"{where}{shown or repr(key)} {message}")   # repr: a key with a newline stays on one line

    def section(self, data: dict, key: str, known: dict[str, str], required: tuple[str, ...] = ()) -> dict:
        value = data.get(key)
        if value is None:
            if required or key == "project":
                self.problem(key, "is missing")
            return {}
        if not isinstance(value, dict):
            self.problem(key, f"must be a mapping, not {_type_name(value)}")
            return {}
        self.unknown_keys(value, key, known)
        for name in required:
            if value.get(name) is None:
                self.problem(f"{key}.{name}", f"is missing ({known[name]})")
        return value

    def unknown_keys(self, value: dict, prefix: str, known: dict[str, str]) -> None:
        for name in value:
            if name not in known:
                close = _closest(str(name), known)
                hint = f"; did you mean '{close}'?" if close else f" (known: {', '.join(known)})"
                self.problem(f"{prefix}.{name}" if prefix else str(name), f"is not a known key{hint}")

    def string(self, value: Any, key: str, pattern: re.Pattern, what: str, default: str | None = None,
               limit: tuple[int, str] | None = None) -> str | None:
        """`limit`: (the longest value a server takes, why), checked before the pattern."""
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.problem(key, f"must be a string ({what}), not {_type_name(value)}")
            return default
        text = str(value)
        limit = limit or LIMITS.get(pattern)
        if limit and len(text.encode()) > limit[0]:
            self.problem(key, f"is {len(text.encode())} characters long ({cut(text)}); at most {limit[0]}: {limit[1]}")
            return default
        # fullmatch: `$` alone would let a trailing newline through into a config file
        if not pattern.fullmatch(text) or "/../" in text + "/" or text.endswith("/.."):
            self.problem(key, f"must be {what}; got {cut(text)}")
            return default
        return text

    def account(self, value: Any, key: str, what: str, default: str | None = None) -> str | None:
        """project.user or project.group: a Linux name, never root (by name or id 0)."""
        if value is not None and not isinstance(value, bool) and isinstance(value, (str, int)) and is_root(str(value)):
            which = "" if value == "root" else f" ({value!r} is root's id)"
            self.problem(key, f"is root{which}: " + ROOT_WHY[what])
            return default
        return self.string(value, key, UNIX_NAME, f"a {what} name like arches", default=default)

    def directory(self, value: Any, key: str, purpose: str) -> str | None:
        """project.path or project.virtualenv: an absolute path, spelt one way, that is
        neither a system directory nor inside one; `purpose`: what the deploy does with it."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(key, f"must be a string (an absolute path), not {_type_name(value)}")
            return None
        if len(value.encode()) > PATH_MAX:
            self.problem(key, f"is {len(value.encode())} bytes long ({cut(value)}); a path has at most {PATH_MAX} "
                              "bytes (PATH_MAX, 4096 with its NUL)")
            return None
        if not ABS_PATH.fullmatch(value):
            self.problem(key, f"must be an absolute path; got {cut(value)}")
            return None
        refused = directory_problem(value, purpose)
        if refused:
            self.problem(key, refused)
            return None
        if ".." in value.split("/"):   # read lexically, '..' after a link would go elsewhere
            self.problem(key, f"must be an absolute path without '..'; got {cut(value)}")
            return None
        return normal_path(value)

    def integer(self, value: Any, key: str, low: int, high: int, default: int | None) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"must be a whole number from {low} to {high}, not {_type_name(value)}")
            return default
        if not low <= value <= high:
            self.problem(key, f"must be from {low} to {high}; got {value}")
            return default
        return value


def parse_inventory(data: Any, path: Path, lines: dict[str, int] | None = None) -> Inventory:
    """`lines`: where each key is in the file, for the problems to name."""
    check = _Checker(path, lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: must be a mapping with the keys project, broker, celery and hosts.")
    check.unknown_keys(data, "", {"project": "", "broker": "", "celery": "", "versions": "", "logs": "",
                                  "hosts": "", "bounds": "", "status": ""})

    proj = check.section(
        data,
        "project",
        {
            "name": "the project's Python package, e.g. my_proj",
            "path": "where the project lives on the servers",
            "virtualenv": "its virtualenv",
            "user": "the user that runs the programs",
            "group": "",
            "requirements": "",
        },
        required=("name", "path", "virtualenv", "user"),
    )
    name = check.string(proj.get("name"), "project.name", IDENTIFIER, "a Python package name like my_proj",
                        limit=name_limit())
    user = check.account(proj.get("user"), "project.user", "user")
    project = Project(
        name=name or "",
        path=check.directory(proj.get("path"), "project.path", "the deploy would write the project's settings and "
                                                               "give the project user files there") or "",
        virtualenv=check.directory(proj.get("virtualenv"), "project.virtualenv",
                                   "the deploy would make it a virtualenv owned by the project user, among the "
                                   "system's files, and undeploy --purge would remove it") or "",
        user=user or "",
        group=check.account(proj.get("group"), "project.group", "group", default=user) or "",
        requirements=check.string(proj.get("requirements"), "project.requirements", REL_PATH,
                                  "a path inside project.path, like requirements.txt"),
    )
    if project.name and project.path and project.virtualenv:
        for key, message in path_problems(project.path, project.virtualenv, project.requirements, project.name):
            check.problem(key, message)

    brk = check.section(data, "broker", {"kind": "", "password_env": "", "url": "", "cookie_env": "",
                                         "redis_default_user": "", "visibility_timeout": "seconds (Redis)",
                                         "consumer_timeout": "seconds (RabbitMQ)"})
    kind = brk.get("kind", "redis")
    if kind not in BROKER_KINDS:
        check.problem("broker.kind", f"must be one of {', '.join(BROKER_KINDS)}; got {kind!r}")
    url = brk.get("url")
    if url is not None and (not isinstance(url, str) or not re.fullmatch(r"(redis|rediss|amqp|amqps)://\S+", url)):
        check.problem("broker.url", "must be a redis://, rediss://, amqp:// or amqps:// URL without spaces")
        url = None
    default_user = brk.get("redis_default_user", REDIS_DEFAULT_USER[0])
    if default_user not in REDIS_DEFAULT_USER:
        check.problem("broker.redis_default_user", f"must be one of {', '.join(REDIS_DEFAULT_USER)}; "
                                                   f"got {default_user!r}")
    elif "redis_default_user" in brk and (kind != "redis" or url is not None):
        check.problem("broker.redis_default_user", "applies only to a Redis that fabcelery sets up (broker.kind: "
                                                   "redis, no broker.url)")
    broker = Broker(
        kind=kind if kind in BROKER_KINDS else "redis",
        password_env=check.string(
            brk.get("password_env"), "broker.password_env", ENV_NAME, "an environment variable name",
            default="FABCELERY_BROKER_PASSWORD",
        ) or "FABCELERY_BROKER_PASSWORD",
        url=url,
        cookie_env=check.string(
            brk.get("cookie_env"), "broker.cookie_env", ENV_NAME, "an environment variable name",
            default="FABCELERY_ERLANG_COOKIE",
        ) or "FABCELERY_ERLANG_COOKIE",
        redis_default_user=default_user if default_user in REDIS_DEFAULT_USER else REDIS_DEFAULT_USER[0],
        visibility_timeout=_broker_timeout(check, brk, "visibility_timeout", kind == "redis",
                                           "applies to Redis only (broker.kind: redis); RabbitMQ's is "
                                           "broker.consumer_timeout"),
        consumer_timeout=_broker_timeout(check, brk, "consumer_timeout", kind == "rabbitmq" and url is None,
                                         "applies only to a RabbitMQ that fabcelery sets up (broker.kind: "
                                         "rabbitmq, no broker.url); Redis's is broker.visibility_timeout"),
    )

    cel = check.section(data, "celery", {"app": "", "concurrency": "", "stopwaitsecs": "", "loglevel": "",
                                         "pools": "", "max_eta": "seconds", "watchdog": ""})
    loglevel = str(cel.get("loglevel", "INFO")).upper()
    if loglevel not in LOGLEVELS:
        check.problem("celery.loglevel", f"must be one of {', '.join(LOGLEVELS)}")
        loglevel = "INFO"
    celery = CelerySettings(
        app=check.string(cel.get("app"), "celery.app", DOTTED, "a dotted module path like my_proj.celery",
                         default=f"{project.name}.celery") or "",
        concurrency=check.integer(cel.get("concurrency"), "celery.concurrency", 1, 256, 2) or 2,
        stopwaitsecs=check.integer(cel.get("stopwaitsecs"), "celery.stopwaitsecs", 1, 86400, 600) or 600,
        loglevel=loglevel,
    )
    celery = CelerySettings(app=celery.app, concurrency=celery.concurrency, stopwaitsecs=celery.stopwaitsecs,
                            loglevel=celery.loglevel, pools=_parse_pools(check, cel.get("pools"), celery),
                            max_eta=check.integer(cel.get("max_eta"), "celery.max_eta", 1, timeouts.MAX_SECONDS,
                                                  None),
                            watchdog=_parse_watchdog(check, cel.get("watchdog")))
    for key, given in (("broker.visibility_timeout", broker.visibility_timeout),
                       ("broker.consumer_timeout", broker.consumer_timeout)):
        for name, message in timeouts.contradictions(key, given, list(celery.pools.values()), celery.max_eta):
            check.problem(name, message)

    ver = check.section(data, "versions", {"celery": "", "supervisor": ""})
    versions = {
        key: check.string(ver.get(key), f"versions.{key}", VERSION, "a version like 5.7.0", default=default)
        or default
        for key, default in DEFAULT_VERSIONS.items()
    }

    bnd = check.section(data, "bounds", {key: "" for key in BOUND_KEYS})
    bounds = DEFAULT_BOUNDS.merged({
        key: check.integer(bnd[key], f"bounds.{key}", *BOUND_LIMITS.get(key, (1, MAX_BOUND)),
                           getattr(DEFAULT_BOUNDS, key))
        for key in BOUND_KEYS if bnd.get(key) is not None
    })

    logs = _parse_logs(check, data)
    stat = check.section(data, "status", {"stalled_after": "seconds"})
    status = StatusSettings(check.integer(stat.get("stalled_after"), "status.stalled_after", 1, MAX_STALLED_AFTER,
                                          StatusSettings.stalled_after) or StatusSettings.stalled_after)
    hosts = _parse_hosts(check, data.get("hosts"), celery.pools)
    if check.problems:
        raise InventoryError(_paragraph(path, check.problems))
    inventory = Inventory(path=path, project=project, broker=broker, celery=celery, versions=versions, hosts=hosts,
                          bounds=bounds, logs=logs, status=status)
    topology = topology_problems(inventory)
    if topology:
        raise InventoryError(_paragraph(path, topology))
    return inventory


def _parse_watchdog(check: _Checker, value: Any) -> Watchdog | None:
    """celery.watchdog: absent (or empty) is off; a mapping turns it on."""
    if value is None:
        return None
    if not isinstance(value, dict):
        check.problem("celery.watchdog", f"must be a mapping like {{stalled_after: 300}} (or left out: no "
                                         f"watchdog), not {_type_name(value)}")
        return None
    check.unknown_keys(value, "celery.watchdog", {"stalled_after": "seconds", "interval": "seconds"})
    stalled_after = check.integer(value.get("stalled_after"), "celery.watchdog.stalled_after",
                                  MIN_WATCHDOG_STALLED_AFTER, MAX_STALLED_AFTER, Watchdog.stalled_after)
    default_interval = min(Watchdog.interval, max(MIN_WATCHDOG_INTERVAL, (stalled_after or 0) // 4))
    interval = check.integer(value.get("interval"), "celery.watchdog.interval", MIN_WATCHDOG_INTERVAL,
                             MAX_STALLED_AFTER, default_interval)
    if stalled_after is None or interval is None:
        return None
    if interval > stalled_after:
        check.problem("celery.watchdog.interval", f"is {interval} s, longer than celery.watchdog.stalled_after "
                                                  f"({stalled_after} s): the timer checks at least once within "
                                                  "stalled_after; make it at most that")
        return None
    return Watchdog(stalled_after, interval)


def _broker_timeout(check: _Checker, brk: dict, name: str, applies: bool, why: str) -> int | None:
    """broker.visibility_timeout or broker.consumer_timeout: seconds, for the broker it applies to."""
    value = check.integer(brk.get(name), f"broker.{name}", 1, timeouts.MAX_SECONDS, None)
    if value is not None and not applies:
        check.problem(f"broker.{name}", why)
        return None
    return value


def _parse_logs(check: _Checker, data: dict) -> LogSettings:
    section = check.section(data, "logs", {"rotate": ""})
    rotate = section.get("rotate")
    if rotate is None:
        return LogSettings()
    if not isinstance(rotate, dict):
        check.problem("logs.rotate", f"must be a mapping like {{size: 100M, keep: 14}}, not {_type_name(rotate)}")
        return LogSettings()
    check.unknown_keys(rotate, "logs.rotate", {"size": "", "keep": ""})
    default = LogSettings()
    size = rotate.get("size", default.size)
    if isinstance(size, bool) or not isinstance(size, (str, int)) or not LOG_SIZE.fullmatch(str(size)):
        check.problem("logs.rotate.size", f"must be a size like 100M (bytes, or with k, M or G); got {size!r}")
        size = default.size
    keep = check.integer(rotate.get("keep"), "logs.rotate.keep", 1, 1000, default.keep) or default.keep
    return LogSettings(size=str(size), keep=keep)


POOL_KEYS = {
    "queues": "the queues it consumes (-Q)", "concurrency": "", "autoscale": "[max, min]",
    "pool": "prefork | threads | solo", "max_tasks_per_child": "", "max_memory_per_child": "KiB",
    "prefetch_multiplier": "", "time_limit": "seconds", "soft_time_limit": "seconds", "stopwaitsecs": "",
    "environment": "", "loglevel": "",
}


def _parse_pools(check: _Checker, raw: Any, defaults: CelerySettings) -> dict[str, Pool]:
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
            check.problem(key, f"must be a mapping, not {_type_name(spec)}")
            continue
        check.unknown_keys(spec, key, POOL_KEYS)
        pools[name] = _parse_pool(check, name, key, spec, defaults)
    return pools or {DEFAULT_POOL: Pool(DEFAULT_POOL)}


def _parse_pool(check: _Checker, name: str, key: str, spec: dict, defaults: CelerySettings) -> Pool:
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


def _autoscale(check: _Checker, value: Any, key: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2 or not all(type(v) is int for v in value)
            or not 1 <= value[0] <= 256 or not 0 <= value[1] <= value[0]):
        check.problem(key, f"must be [max, min] processes, 1 <= max <= 256 and 0 <= min <= max; got {value!r}")
        return None
    return value[0], value[1]


def _environment(check: _Checker, value: Any, key: str) -> tuple[tuple[str, str], ...]:
    """Extra variables of a pool's program; the values go inside double quotes in supervisor's
    `environment=` line, so neither quotes nor line breaks can be allowed in them."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        check.problem(key, f"must be a mapping of variable names to values, not {_type_name(value)}")
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
            check.problem(f"{key}.{name}", f"must be a string or a number, not {_type_name(raw)}")
            continue
        text = str(raw)
        if any(c in text for c in "\"'") or any(ord(c) < 32 or ord(c) == 127 for c in text):
            check.problem(f"{key}.{name}", "must not hold quotes, line breaks or other control characters "
                                           f"(they would break supervisor's environment= line); got {text!r}")
            continue
        items.append((name, text))
    return tuple(items)


def _parse_hosts(check: _Checker, raw: Any, pools: dict[str, Pool]) -> dict[str, HostSpec]:
    if raw is None or raw == {}:
        return {}   # no hosts: `fab -H` names SSH destinations, each with every role
    if not isinstance(raw, dict):
        check.problem("hosts", "must be a mapping of host names to their settings")
        return {}
    known = {"address": "", "user": "", "port": "", "internal_address": "", "roles": "", "pools": ""}
    hosts = {}
    for name, spec in raw.items():
        key = f"hosts.{name}"
        if isinstance(name, str) and len(name.encode()) > HOST_LIMIT[0]:
            check.problem(key, f"is {len(name.encode())} characters long; at most {HOST_LIMIT[0]}: {HOST_LIMIT[1]}",
                          shown=repr(f"hosts.{name[:60]}…"))
            continue
        if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
            check.problem(key, "is not a usable host name (letters, digits, '.', '-', '_')")
            continue
        spec = spec or {}
        if not isinstance(spec, dict):
            check.problem(key, f"must be a mapping, not {_type_name(spec)}")
            continue
        check.unknown_keys(spec, key, known)
        roles = spec.get("roles", list(ROLES))
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            check.problem(f"{key}.roles", f"must be a non-empty list of roles from: {', '.join(ROLES)}")
            roles = []
        for role in roles:
            if role not in ROLES:
                check.problem(f"{key}.roles", f"has an unknown role {role!r} (roles: {', '.join(ROLES)})")
        hosts[name] = HostSpec(
            name=name,
            address=check.string(spec.get("address"), f"{key}.address", ADDRESS, "a host name or IP address"),
            user=check.string(spec.get("user"), f"{key}.user", UNIX_NAME, "a user name"),
            port=check.integer(spec.get("port"), f"{key}.port", 1, 65535, None),
            internal_address=check.string(
                spec.get("internal_address"), f"{key}.internal_address", ADDRESS, "a host name or IP address"
            ),
            roles=tuple(r for r in ROLES if r in roles),
            pools=_host_pools(check, spec, key, pools, "worker" in roles),
        )
    return hosts


def _host_pools(check: _Checker, spec: dict, key: str, pools: dict[str, Pool], worker: bool) -> tuple[str, ...] | None:
    names = spec.get("pools")
    if names is None:
        return None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        check.problem(f"{key}.pools", f"must be a non-empty list of pool names from 'celery.pools' "
                                      f"({', '.join(pools)})")
        return None
    if not worker:
        check.problem(f"{key}.pools", "is set, but the host has no worker role (pools run on worker hosts)")
    for name in names:
        if name not in pools:
            check.problem(f"{key}.pools", f"names the pool {name!r}, which 'celery.pools' does not define "
                                          f"(pools: {', '.join(pools)})")
    if len(set(names)) != len(names):
        check.problem(f"{key}.pools", "names a pool twice")
    # in the order of celery.pools, so that moving a name in the list changes nothing
    return tuple(p for p in pools if p in names)


def topology_problems(inventory: Inventory) -> list[str]:
    """Roles that cannot make a working cluster."""
    hosts = inventory.hosts.values()
    problems = []
    workers = [h.name for h in hosts if h.has("worker")]
    beats = [h.name for h in hosts if h.has("beat")]
    brokers = [h.name for h in hosts if h.has("broker")]
    if workers and len(beats) != 1:
        which = "none has it" if not beats else f"{', '.join(beats)} all have it"
        problems.append(
            f"'hosts' must give the role beat to exactly one host (celery beat runs once per fleet); {which}"
        )
    if len(brokers) > 1:
        problems += _cluster_problems(inventory, brokers)
    if workers and not brokers and not inventory.broker.url:
        problems.append("'hosts' has workers but no host with the role broker, and 'broker.url' is not set")
    if workers:
        placed = {p for h in hosts if h.has("worker") for p in (inventory.celery.pools if h.pools is None else h.pools)}
        consumed = {q for name in placed for q in inventory.celery.pools[name].queues}
        for name, pool in inventory.celery.pools.items():
            orphaned = [q for q in pool.queues if q not in consumed]
            if name not in placed and orphaned:
                problems.append(
                    f"'celery.pools.{name}' runs on no host (no worker host lists it in 'pools'), and no other pool "
                    f"consumes its queue{'s' if len(orphaned) > 1 else ''} {', '.join(orphaned)}: tasks sent there "
                    "would wait forever"
                )
    if brokers and inventory.broker.url:
        problems.append(f"'broker.url' is set, so no host may have the role broker (has it: {brokers[0]})")
    if len(list(hosts)) > 1 and brokers and workers and len(brokers) == 1:
        broker = inventory.hosts[brokers[0]]
        remote_workers = [w for w in workers if w != broker.name]
        if remote_workers and not broker.internal_address:
            problems.append(
                f"'hosts.{broker.name}.internal_address' is missing: workers on "
                f"{', '.join(remote_workers)} need the address where they reach the broker"
            )
        elif remote_workers and not _is_ip(broker.internal_address):
            problems.append(
                f"'hosts.{broker.name}.internal_address' must be an IP address (the broker listens on it); "
                f"got {broker.internal_address!r}"
            )
    return problems


def _cluster_problems(inventory: Inventory, brokers: list[str]) -> list[str]:
    """Several broker hosts: a RabbitMQ cluster of an odd number of nodes, at least 3, each with
    an internal_address (an IP address) and a node name (rabbit@NAME, NAME the host's name up
    to its first dot) of its own."""
    which = ", ".join(brokers)
    if inventory.broker.url:
        return []   # reported below: broker.url and broker hosts exclude each other
    if inventory.broker.kind != "rabbitmq":
        return [f"'hosts' gives the role broker to {which}; Redis has one broker host per fleet (fabcelery "
                "does not set up Redis Sentinel or Redis Cluster): give the role broker to one host, or use "
                "'broker.kind: rabbitmq' for a cluster of 3 or 5 broker hosts"]
    problems = []
    if len(brokers) % 2 == 0:
        why = ("a two-node cluster's quorum queues cannot survive the loss of either node"
               if len(brokers) == 2 else "an even number of nodes survives no more failures than one node fewer")
        problems.append(f"'hosts' gives the role broker to {len(brokers)} hosts ({which}); a RabbitMQ cluster needs "
                        f"an odd number of them, at least 3 ({why})")
    for name in brokers:
        address = inventory.hosts[name].internal_address
        if not address:
            problems.append(f"'hosts.{name}.internal_address' is missing: the nodes of a RabbitMQ cluster reach "
                            "each other, and the workers reach them, at that address")
        elif not _is_ip(address):
            problems.append(f"'hosts.{name}.internal_address' must be an IP address (the node listens on it); "
                            f"got {address!r}")
    for name in brokers:
        long_node = node_name_problem(name)
        if long_node:
            problems.append(f"'hosts.{name[:60]}…' {long_node}")
    short = {}
    for name in brokers:
        short.setdefault(name.split(".")[0], []).append(name)
    for node, names in short.items():
        if len(names) > 1:
            problems.append(f"'hosts' {', '.join(names)} would all be the RabbitMQ node rabbit@{node} (a node is "
                            "named after its host up to the first dot); give them names that differ there")
    return problems


def _is_ip(value: str | None) -> bool:
    try:
        ipaddress.ip_address(value or "")
        return True
    except ValueError:
        return False


def _paragraph(path: Path, problems: list[str]) -> str:
    return f"{path}: " + "; ".join(problems) + ". Fix the inventory and run again; nothing was changed."


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "true/false", type(None): "empty"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _closest(name: str, known: dict[str, str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return match[0] if match else None
