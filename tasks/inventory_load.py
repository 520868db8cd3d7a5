"""inventory.yaml: loading and validation (the contract in docs/inventory.md).

Everything is checked before any host is touched; a problem becomes one
InventoryError naming the file and the key, and the task exits with status 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from . import timeouts
from .bounds import DEFAULT as DEFAULT_BOUNDS
from .bounds import KEYS as BOUND_KEYS
from .bounds import LIMITS as BOUND_LIMITS
from .bounds import MAX_BOUND
from .inventory import (
    BROKER_KINDS,
    DEFAULT_VERSIONS,
    DOTTED,
    ENV_NAME,
    IDENTIFIER,
    LOG_SIZE,
    LOGLEVELS,
    MAX_STALLED_AFTER,
    MIN_WATCHDOG_INTERVAL,
    MIN_WATCHDOG_STALLED_AFTER,
    REDIS_DEFAULT_USER,
    REL_PATH,
    VERSION,
    Broker,
    CelerySettings,
    Inventory,
    InventoryError,
    LogSettings,
    Project,
    StatusSettings,
    Watchdog,
)
from .inventory_check import Checker, paragraph, type_name
from .inventory_hosts import parse_hosts, topology_problems
from .inventory_pools import parse_pools
from .refusals import Unreadable, name_limit, path_problems, read_yaml


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
        raise InventoryError(paragraph(path, [str(exc)])) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise InventoryError(f"{path}: is not valid YAML{line}: {getattr(exc, 'problem', exc)}.") from None
    return parse_inventory(data, path, lines)



def parse_inventory(data: Any, path: Path, lines: dict[str, int] | None = None) -> Inventory:
    """`lines`: where each key is in the file, for the problems to name."""
    check = Checker(path, lines)
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
                            loglevel=celery.loglevel, pools=parse_pools(check, cel.get("pools"), celery),
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
    hosts = parse_hosts(check, data.get("hosts"), celery.pools)
    if check.problems:
        raise InventoryError(paragraph(path, check.problems))
    inventory = Inventory(path=path, project=project, broker=broker, celery=celery, versions=versions, hosts=hosts,
                          bounds=bounds, logs=logs, status=status)
    topology = topology_problems(inventory)
    if topology:
        raise InventoryError(paragraph(path, topology))
    return inventory


def _parse_watchdog(check: Checker, value: Any) -> Watchdog | None:
    """celery.watchdog: absent (or empty) is off; a mapping turns it on."""
    if value is None:
        return None
    if not isinstance(value, dict):
        check.problem("celery.watchdog", f"must be a mapping like {{stalled_after: 300}} (or left out: no "
                                         f"watchdog), not {type_name(value)}")
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


def _broker_timeout(check: Checker, brk: dict, name: str, applies: bool, why: str) -> int | None:
    """broker.visibility_timeout or broker.consumer_timeout: seconds, for the broker it applies to."""
    value = check.integer(brk.get(name), f"broker.{name}", 1, timeouts.MAX_SECONDS, None)
    if value is not None and not applies:
        check.problem(f"broker.{name}", why)
        return None
    return value


def _parse_logs(check: Checker, data: dict) -> LogSettings:
    section = check.section(data, "logs", {"rotate": ""})
    rotate = section.get("rotate")
    if rotate is None:
        return LogSettings()
    if not isinstance(rotate, dict):
        check.problem("logs.rotate", f"must be a mapping like {{size: 100M, keep: 14}}, not {type_name(rotate)}")
        return LogSettings()
    check.unknown_keys(rotate, "logs.rotate", {"size": "", "keep": ""})
    default = LogSettings()
    size = rotate.get("size", default.size)
    if isinstance(size, bool) or not isinstance(size, (str, int)) or not LOG_SIZE.fullmatch(str(size)):
        check.problem("logs.rotate.size", f"must be a size like 100M (bytes, or with k, M or G); got {size!r}")
        size = default.size
    keep = check.integer(rotate.get("keep"), "logs.rotate.keep", 1, 1000, default.keep) or default.keep
    return LogSettings(size=str(size), keep=keep)
