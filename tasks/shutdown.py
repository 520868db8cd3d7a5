"""A restart loses no task it could keep: deciding it is pure.

supervisord stops a worker with TERM, Celery's warm shutdown: the worker takes no new task
and waits for the running ones; after `stopwaitsecs` supervisord KILLs it. A task killed so
is lost when its message was acknowledged at its start (Celery's default), and with acks_late
its message is left unacknowledged: RabbitMQ gives it back at once (the connection is gone),
Redis only after visibility_timeout (hours, tasks/timeouts.py).

Celery 5.5 and later hand such a task back themselves: a cold shutdown (QUIT) first cancels
the running tasks (their processes get TERM), then gives back every message not yet
acknowledged (acks_late), and the worker exits. So on a host whose Celery is 5.5 or later, a
listener of supervisord's (tasks/scripts/handback.py, in the worker's program file) sends a
stopping worker QUIT when its warm shutdown's time (the pool's stopwaitsecs) is up, and
supervisord's own stopwaitsecs is that plus GRACE for the cold shutdown. The task runs again
from its start on a worker that takes it, once its first run is gone.

Celery's own soft shutdown (worker_soft_shutdown_timeout with REMAP_SIGTERM=SIGQUIT) is not
used: it sleeps its whole time whenever a task runs (a restart would always wait that long),
and it sleeps in the worker's main process, which then sends the broker no heartbeat (RabbitMQ
closes the connection after a few minutes and gives the task to another worker while it still
runs) and acknowledges no task that ends meanwhile.

Older Celery (Arches pins 5.3.6), and pools other than prefork (threads, solo: Celery cannot
cancel their tasks), keep the warm shutdown and supervisord's KILL after stopwaitsecs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .broker import celery_version
from .checksum import sha256
from .inventory import HostSpec, Inventory, Pool
from .probe import Facts
from .programs import HANDBACK_GRACE, host_pools, pool_program
from .scripts import text

HANDBACK_CELERY = (5, 5)      # Celery's cold shutdown gives acks_late tasks back from 5.5 on
GRACE = HANDBACK_GRACE        # seconds from QUIT to supervisord's KILL: the cold shutdown's time


@dataclass(frozen=True)
class Handback:
    """A worker the listener ends: its program, its warm shutdown's seconds, its log."""

    program: str
    seconds: int
    log: str


def release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


def hands_back(pool: Pool) -> bool:
    """Whether Celery can cancel this pool's running tasks: prefork, its default, only."""
    return pool.pool in (None, "prefork")


def handbacks(inventory: Inventory, host: HostSpec, facts: Facts) -> list[Handback]:
    """The worker programs of this host that the listener ends when their warm shutdown's
    time is up: none where the host's Celery is older than 5.5."""
    if release(celery_version(inventory, facts)) < HANDBACK_CELERY:
        return []
    return [Handback(p.name, p.stopwaitsecs, pool_program(inventory, p).log)
            for p in host_pools(inventory, host) if hands_back(p)]


def listener(program: str) -> str:
    """supervisor's name of a worker's listener (in the worker's own program file): a pool's
    name has no '-', so it is never a pool's."""
    return f"{program}-handback"


def listener_script(inventory: Inventory) -> str:
    """tasks/scripts/handback.py on the server: root's, read by the project's supervisord."""
    return f"/etc/supervisor/{inventory.project.name}-handback.py"


def supervisor_stopwaitsecs(pool_seconds: int, handback: bool) -> int:
    """supervisord's stopwaitsecs of a worker: its warm shutdown, and the cold shutdown's grace
    where the listener ends it."""
    return pool_seconds + (GRACE if handback else 0)


def context(inventory: Inventory, host: HostSpec, facts: Facts) -> dict:
    """What the templates need: the listener's table, its script, and supervisord's
    stopwaitsecs per worker program (templates/celeryd.conf.j2, handback.conf.j2)."""
    table = handbacks(inventory, host, facts)
    ended = {h.program for h in table}
    return {
        "handbacks": table,
        "handback_script": listener_script(inventory),
        "handback_grace": GRACE,
        # in the listener's environment: a new script restarts it (supervisorctl update)
        "handback_sha256": sha256(text("handback.py"))[:16],
        "celery_release": celery_version(inventory, facts),
        "stopwaitsecs": {p.name: supervisor_stopwaitsecs(p.stopwaitsecs, p.name in ended)
                         for p in host_pools(inventory, host)},
    }
