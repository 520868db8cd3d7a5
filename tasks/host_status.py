"""What fab status found on one host (tasks/status.py reads it; a day-two Outcome carries it,
tasks/operation.py): its programs' rows, its broker's health, its cluster and queues."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from .beats import BeatProcess
from .queues import BrokerCounts
from .supervisor import ProgramStatus


@dataclass(frozen=True)
class ProgramRow(ProgramStatus):
    """A row of fab status: a program as supervisorctl says (or the broker's health, state UP
    or DOWN), with what the table shows besides."""

    detail: str = ""                  # why it is not running, in words (the DETAIL cell)
    queues: tuple[str, ...] = ()      # a worker pool's queues
    watchdog: dict | None = None      # the watchdog's last restart of it: {"at": epoch, "reason", "result"}

    @property
    def cell(self) -> str:
        """The DETAIL cell of the table: a pool's queues, why it is not running, and the
        watchdog's last restart of it."""
        return "; ".join(x for x in ("queues: " + ", ".join(self.queues) if self.queues else "", self.detail,
                                     watchdog_note(self.watchdog)) if x)

    @property
    def ok(self) -> bool:
        return self.state in ("RUNNING", "UP")


@dataclass(frozen=True)
class HostStatus:
    host: str
    reachable: bool = True
    error: str = ""                          # the host could not be asked (unreachable, sudo, ...)
    programs: tuple[ProgramRow, ...] = ()
    broker: ProgramRow | None = None         # on broker hosts: the broker's health
    cluster: dict | None = None              # a RabbitMQ cluster's node: what it says of the cluster
    beats: tuple[BeatProcess, ...] = ()      # the processes that run the app's celery beat (tasks/beats.py)
    queue_counts: BrokerCounts | None = None  # on the broker host: its queues' lengths (tasks/queues.py)
    stall: dict | None = None                # the stall rule's histories on this host (tasks/scripts/stall_rule.py)

    @property
    def ok(self) -> bool:
        return not self.error and all(p.ok for p in self.rows)

    @property
    def rows(self) -> tuple[ProgramRow, ...]:
        return self.programs + ((self.broker,) if self.broker else ())

    def counts(self) -> tuple[int, int]:
        """(healthy, unhealthy) things on this host, for the recap."""
        if self.error:
            return 0, 1
        good = sum(1 for r in self.rows if r.ok)
        return good, len(self.rows) - good


def watchdog_note(restart: dict | None) -> str:
    if not restart or not isinstance(restart.get("at"), (int, float)):
        return ""
    return f"last watchdog restart {when_utc(restart['at'])} ({restart.get('reason') or 'stalled'})"


def when_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
