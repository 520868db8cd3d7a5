"""Which Celery a host's workers run, and what a RabbitMQ cluster asks of it: quorum queues,
which Celery declares from 5.5 on, and for the queues it creates on demand from 5.6 on.
"""

from __future__ import annotations

import re

from .probe import Facts
from .rabbitmq_cluster import cluster_hosts
from .target import Target

QUORUM_CELERY = (5, 5)          # Celery declares quorum queues from 5.5 on (task_default_queue_type)

# ... and the queues it creates on demand (a pool's -Q) from 5.6 on (task_create_missing_queue_type)
QUORUM_MISSING_CELERY = (5, 6)



def celery_version(target: Target, facts: Facts) -> str:
    """The celery a host's workers run: the virtualenv's, else the project's pin, else fabcelery's."""
    if facts.dists.get("celery"):
        return facts.dists["celery"]
    layout = target.layout
    text = facts.contents.get(layout.requirements) if layout.requirements else None
    pin = re.search(r"(?im)^\s*celery(?:\[[^\]]*\])?\s*==\s*([0-9][A-Za-z0-9.]*)", text or "")
    return pin[1] if pin else target.inventory.versions["celery"]



def celery_problem(target: Target, facts: Facts) -> str:
    """Quorum queues need Celery 5.5 or later; a host of a cluster's fleet with an older one is
    refused before anything changes."""
    if not cluster_hosts(target.inventory) or not (target.host.has("worker") or target.host.has("beat")):
        return ""
    version = celery_version(target, facts)
    release = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    # queues other than the default one: the pools' own, which Celery creates when asked for
    # them; before 5.6 those would be classic queues, on one node only
    other_queues = sorted({q for pool in target.inventory.celery.pools.values() for q in pool.queues} - {"celery"})
    if release >= QUORUM_CELERY and (release >= QUORUM_MISSING_CELERY or not other_queues):
        return ""
    if release >= QUORUM_CELERY:
        return (f"this host's Celery is {version}, and on a RabbitMQ cluster the pools' queues "
                f"({', '.join(other_queues)}) need Celery 5.6 or later (before 5.6, Celery declares the queues it "
                "creates for -Q as classic queues, which live on one node only): upgrade the project's celery pin "
                "to 5.6 or later, or let every pool consume only the celery queue")
    return (f"this host's Celery is {version}, and a RabbitMQ cluster needs Celery 5.5 or later (its queues are "
            "quorum queues, which Celery declares from 5.5 on; Arches 7.5 to 8.0 pin celery 5.3.6): upgrade the "
            "project's celery pin to 5.5 or later, or use one broker host")

