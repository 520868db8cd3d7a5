"""A restart loses no task it could keep: deciding it is pure.

supervisord stops a worker with TERM, Celery's warm shutdown: the worker takes no new task and
waits for the running ones; after `stopwaitsecs` supervisord KILLs it. A task killed so is lost
when its message was acknowledged at its start (Celery's default); with acks_late its message
is left unacknowledged: RabbitMQ gives it back when the connection is gone, Redis only after
visibility_timeout (hours, tasks/timeouts.py).

Celery 5.5 and later hand such a task back themselves: their cold shutdown (QUIT) cancels the
running tasks whose message is not acknowledged yet (acks_late), stops consuming, and closes
the connection, which gives those messages back (RabbitMQ requeues them, kombu's Redis
transport restores them), and the worker exits. So on a host whose Celery is 5.5 or later,
each prefork worker sends itself QUIT when its warm shutdown has lasted the pool's
stopwaitsecs: a few lines in the settings block (templates/settings_local.block.j2) start a
timer at the warm shutdown (Celery's worker_shutting_down signal), for the seconds the
program's environment gives (HANDBACK_ENV); supervisord's own stopwaitsecs is that plus
GRACE, the cold shutdown's time. A task that ends within the warm shutdown is acknowledged as
always and runs once; the warm shutdown ends as soon as no task runs.

Celery's own soft shutdown (worker_soft_shutdown_timeout, with REMAP_SIGTERM=SIGQUIT for
supervisord's TERM) is not used: in Celery 5.5 to 5.6 its main process sleeps the whole
timeout inside the signal handler whenever a task runs (WorkController.wait_for_soft_shutdown),
so a restart always waits that long; meanwhile the main process runs no event loop: the broker
gets no heartbeat (RabbitMQ closes the connection after Celery's broker_heartbeat, 120 s, and
gives the still running task to another worker: two runs at once), and no task that ends in
the meantime is acknowledged.

Older Celery (Arches pins 5.3.6) and pools other than prefork (threads, solo: Celery cannot
cancel their tasks) keep the warm shutdown and supervisord's KILL after stopwaitsecs.
"""

from __future__ import annotations

import re

from .inventory import Pool
from .programs import HANDBACK_GRACE

HANDBACK_CELERY = (5, 5)      # Celery's cold shutdown gives acks_late tasks back from 5.5 on
GRACE = HANDBACK_GRACE        # seconds from QUIT to supervisord's KILL: the cold shutdown's time
# in a worker program's environment: the seconds of warm shutdown after which it sends itself QUIT
HANDBACK_ENV = "FABCELERY_HANDBACK_AFTER"
# the lines of the settings block that only the workers run (templates/settings_local.block.j2)
HANDBACK_BEGIN = "# -- the workers' hand-back (fabcelery) --"
HANDBACK_END = "# -- end of the workers' hand-back --"


def release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string: "5.6.3" -> (5, 6)."""
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


def celery_hands_back(version: str) -> bool:
    """Whether this Celery's cold shutdown gives unacknowledged (acks_late) tasks back."""
    return release(version) >= HANDBACK_CELERY


def pool_hands_back(pool: Pool) -> bool:
    """Whether Celery can cancel this pool's running tasks: prefork, its default, only."""
    return pool.pool in (None, "prefork")


def handback_seconds(pools: list[Pool], version: str) -> dict[str, int]:
    """{pool: seconds of warm shutdown before the worker sends itself QUIT}, for the pools whose
    running tasks are handed back: none with a Celery older than 5.5."""
    if not celery_hands_back(version):
        return {}
    return {p.name: p.stopwaitsecs for p in pools if pool_hands_back(p)}


def supervisor_stopwaitsecs(pool: Pool, handback: dict[str, int]) -> int:
    """supervisord's stopwaitsecs of a worker: its warm shutdown, and the cold shutdown's grace
    where the worker hands its tasks back."""
    return pool.stopwaitsecs + (GRACE if pool.name in handback else 0)


def without_handback(text: str | None) -> str | None:
    """settings_local.py without the block's hand-back lines: when that is all that changed,
    only the workers read the change (beat keeps running)."""
    if text is None:
        return None
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == HANDBACK_BEGIN:
            inside = True
        if not inside:
            kept.append(line)
        if line.rstrip("\n") == HANDBACK_END:
            inside = False
    return "".join(kept)
