"""The broker's timeouts follow from the pools: deciding them is pure.

A task the broker has handed to a worker and that is not acknowledged yet is given to
another worker (Redis: kombu's `visibility_timeout`, 1 hour by default) or its consumer is
closed (RabbitMQ: `consumer_timeout`, 30 minutes by default) once that time is up. A task
that runs longer (with acks_late), or waits longer for its ETA/countdown in the worker,
then runs twice or is cut off. So the deploy sets both above the longest task any pool may
run and above `celery.max_eta`, with a margin, and never below the broker's own default.

A pool's longest task is its `time_limit`; a pool without one is taken to finish its tasks
within its `stopwaitsecs` (600 s by default): the time a warm shutdown already waits for
them, which the inventory keeps at least as long as time_limit. A value the user sets
(`broker.visibility_timeout`, `broker.consumer_timeout`) is used as given, and refused when
it is not above what a pool or `celery.max_eta` needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .broker_kind import broker_of

if TYPE_CHECKING:
    from .inventory import Pool

REDIS_DEFAULT = 3600          # kombu's visibility_timeout when none is set
RABBITMQ_DEFAULT = 1800       # RabbitMQ's consumer_timeout (3.10 to 4.x): 1800000 ms
# each broker's own timeout (its strategy's timeout_key) when nothing sets it
DEFAULTS = {"visibility_timeout": REDIS_DEFAULT, "consumer_timeout": RABBITMQ_DEFAULT}
MARGIN_MIN = 300              # the margin: 10 % of the longest need, at least 5 minutes
MARGIN_SHARE = 10
# The most the inventory takes for these keys: 30 days (RabbitMQ's value is in milliseconds
# and must stay below 2**32 with the margin on top).
MAX_SECONDS = 30 * 86400


@dataclass(frozen=True)
class Need:
    """What a timeout must be above: `seconds`, and the inventory key that asks for it."""

    seconds: int
    key: str


def pool_need(pool: Pool) -> Need:
    """How long a task of this pool may hold its message: its time_limit, else its stopwaitsecs."""
    if pool.time_limit:
        return Need(pool.time_limit, f"celery.pools.{pool.name}.time_limit")
    # a pool of `celery.pools` (explicit_queues), or the one pool of an inventory without it
    key = f"celery.pools.{pool.name}.stopwaitsecs" if pool.explicit_queues else "celery.stopwaitsecs"
    return Need(pool.stopwaitsecs, key)


def needs(pools: list[Pool], max_eta: int | None) -> list[Need]:
    """Everything the broker's timeout must be above, longest first."""
    found = [pool_need(p) for p in pools]
    if max_eta:
        found.append(Need(max_eta, "celery.max_eta"))
    return sorted(found, key=lambda n: -n.seconds)


def margin(seconds: int) -> int:
    return max(MARGIN_MIN, seconds // MARGIN_SHARE)


def derived(longest: int, broker_default: int) -> int:
    """The timeout for a longest need of `longest` seconds: that plus the margin, never below
    the broker's own default."""
    return max(broker_default, longest + margin(longest))


def timeout(given: int | None, pools: list[Pool], max_eta: int | None, broker_default: int) -> int:
    """The broker's timeout in seconds: the user's, else the derived one."""
    if given:
        return given
    return derived(max(n.seconds for n in needs(pools, max_eta)), broker_default)


def contradictions(key: str, given: int | None, pools: list[Pool], max_eta: int | None) -> list[tuple[str, str]]:
    """(key, message) for a user-set timeout that is not above a need, naming both keys."""
    if not given:
        return []
    return [(key, f"({given} s) is not above {need.key} ({need.seconds} s): a task still running (or still "
                  f"waiting for its ETA) after {given} s would be "
                  + ("handed to another worker and run twice" if key.endswith("visibility_timeout")
                     else "cut off by RabbitMQ, which closes its consumer")
                  + f"; make {key} larger than {need.seconds}, or leave it out and the deploy derives it")
            for need in needs(pools, max_eta) if given <= need.seconds]


def _own_timeout(inventory, key: str) -> int | None:
    """The broker's timeout named `key` when it is this broker's own (its strategy's timeout_key)
    and applies to it, seconds; else None."""
    broker = broker_of(inventory)
    if broker.timeout_key != key or not broker.timeout_applies():
        return None
    return timeout(getattr(inventory.broker, key), list(inventory.celery.pools.values()),
                   inventory.celery.max_eta, DEFAULTS[key])


def visibility_timeout(inventory) -> int | None:
    """Redis: kombu's visibility_timeout in the settings block, seconds (None for RabbitMQ)."""
    return _own_timeout(inventory, "visibility_timeout")


def consumer_timeout(inventory) -> int | None:
    """RabbitMQ that fabcelery manages: consumer_timeout in its config, seconds (None otherwise)."""
    return _own_timeout(inventory, "consumer_timeout")


def why(inventory, seconds: int) -> str:
    """The comment beside the value in the settings block or RabbitMQ's config: where it comes from."""
    key = broker_of(inventory).timeout_key
    if getattr(inventory.broker, key):
        return f"{seconds} s, set by broker.{key} in the inventory"
    longest = needs(list(inventory.celery.pools.values()), inventory.celery.max_eta)[0]
    return f"{seconds} s, {longest.key} ({longest.seconds} s) and a margin of {margin(longest.seconds)} s"


def written(inventory) -> int | None:
    """The value the deploy writes (settings block for Redis, RabbitMQ's config), seconds; None
    when it is the broker's own default and the user set none: then nothing is written, and a
    deployment made before these settings changes nothing (no restart)."""
    key = broker_of(inventory).timeout_key
    seconds = _own_timeout(inventory, key)
    given, default = getattr(inventory.broker, key), DEFAULTS[key]
    if seconds is None or (not given and seconds == default):
        return None
    return seconds


def context(inventory) -> dict:
    """What templates/settings_local.block.j2 and rabbitmq.conf.j2 need."""
    seconds = written(inventory)
    return {"visibility_timeout": None, "consumer_timeout": None, broker_of(inventory).timeout_key: seconds,
            "timeout_why": why(inventory, seconds) if seconds else ""}
