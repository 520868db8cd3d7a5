"""Resources of the broker step (tasks/broker.py plan_broker): a value the fleet shares, kept on
the broker host; the broker's config files, installed together; a RabbitMQ node that reads its
peers anew; the broker's service, restarted when what it reads changed; and the kind's own
changes (its config lines, a cluster's join, the project's account).

The broker step's probe is broker.broker_needs (with the kind's own needs), as it always was:
these resources say what changes, not what to ask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .checksum import sha256
from .erlang import RABBITMQ_INETRC, epmd_restart_script
from .plan import Action, Upload
from .probe import Facts, ProbeSpec
from .resources import Diff, doing, nothing
from .shell import cmd

if TYPE_CHECKING:
    from .broker_kind import BrokerKind


@dataclass(frozen=True)
class KeptSecret:
    """A value the fleet shares (the broker password, a cluster's Erlang cookie), kept on the
    broker host where later deploys read it: root's, 0600, never shown."""

    path: str
    value: str
    what: str                   # "the broker password", for the action's line
    present: bool = True

    def needs(self) -> ProbeSpec:
        return ProbeSpec(checksums=(self.path,))

    def diff(self, facts: Facts) -> Diff:
        if facts.checksums.get(self.path) == sha256(self.value):
            return nothing(f"{self.what} kept in {self.path}")
        return doing(Action(f"keep {self.what} in {self.path} (0600, root)",
                            uploads=(Upload(self.path, self.value, "root", "root", "0600", secret=True, diff=False),)))


@dataclass(frozen=True)
class BrokerFiles:
    """The broker's config files (its fragment; a RabbitMQ node's Erlang files and cookie), each
    compared by checksum, and the changed ones installed together: all validated, then
    `before_rename` (Redis records that it owes a restart), then renamed into place."""

    uploads: tuple[Upload, ...]      # what each file should hold (old_content: from the facts)
    before_rename: str = ""
    epmd: tuple[str, ...] = ()       # files whose change takes epmd's socket restarted
    present: bool = True

    def needs(self) -> ProbeSpec:
        return ProbeSpec(checksums=tuple(u.target for u in self.uploads))

    def changed(self, facts: Facts) -> list[Upload]:
        return [replace(u, old_content=facts.contents.get(u.target)) if u.diff else u
                for u in self.uploads if facts.checksums.get(u.target) != sha256(u.content)]

    def diff(self, facts: Facts) -> Diff:
        changed = self.changed(facts)
        if not changed:
            return nothing("the broker's config files are up to date")
        return doing(Action(f"install {', '.join(u.target for u in changed)}", uploads=tuple(changed),
                            before_rename=self.before_rename))


@dataclass(frozen=True)
class PeersReread:
    """A running cluster node whose only changed file is its inetrc (a node was added): it reads
    its peers' names anew, with no restart, so adding nodes never restarts the ones that serve
    (its CLI tools read the file at start)."""

    files: BrokerFiles
    node: str                        # rabbit@NAME
    unit: str
    present: bool = True

    def needs(self) -> ProbeSpec:
        return ProbeSpec(services=(self.unit,))

    def applies(self, facts: Facts) -> bool:
        return ([u.target for u in self.files.changed(facts)] == [RABBITMQ_INETRC] and facts.systemd
                and facts.service_active(self.unit))

    def diff(self, facts: Facts) -> Diff:
        if not self.applies(facts):
            return nothing(f"{self.node}'s peers are as it read them")
        return doing(Action(f"{self.node} reads the cluster's names anew from {RABBITMQ_INETRC}",
                            cmd("timeout", "60", "rabbitmqctl", "-q", "eval",
                                f'ok = inet_db:add_rc("{RABBITMQ_INETRC}").') + " >/dev/null"))


@dataclass(frozen=True)
class KindChanges:
    """What the broker's kind decides on its own (tasks/broker_kind.py): its config lines, a
    cluster node's join, the project's account."""

    what: str
    decide: Callable[[Facts], list[Action]]
    present: bool = True

    def needs(self) -> ProbeSpec:
        return ProbeSpec()

    def diff(self, facts: Facts) -> Diff:
        return doing(*actions) if (actions := self.decide(facts)) else nothing(f"{self.what} as it should be")


@dataclass(frozen=True)
class BrokerService:
    """The broker's unit: enabled, running and answering. Restarted (and waited for) when a file
    or config line it reads changed, or a restart is owed; epmd's socket anew first when its
    drop-in changed. A restart, not a start: a package installed by this deploy is already
    running with its default config."""

    kind: BrokerKind
    files: BrokerFiles
    peers: PeersReread | None        # a cluster node: a change of its peers alone restarts nothing
    node_files: bool                 # the kind's config lines depend on whether it has node files
    present: bool = True

    def needs(self) -> ProbeSpec:
        return ProbeSpec(services=(self.kind.unit,))

    def restarts(self, facts: Facts) -> bool:
        files = bool(self.files.changed(facts)) and not (self.peers and self.peers.applies(facts))
        return files or self.kind.config_actions(facts, self.node_files)[1]

    def diff(self, facts: Facts) -> Diff:
        kind, unit = self.kind, self.kind.unit
        restart = self.restarts(facts)
        service = ""
        if facts.systemd:
            if not facts.service_enabled(unit):
                service += cmd("systemctl", "enable", "--quiet", unit) + "\n"
            if any(u.target in self.files.epmd for u in self.files.changed(facts)):
                service += epmd_restart_script(unit)
            if restart:
                service += cmd("systemctl", "restart", unit) + "\n"
            elif not facts.service_active(unit):
                service += cmd("systemctl", "start", unit) + "\n"
        elif restart or not kind.answers(facts):
            name = unit.removesuffix(".service")
            service += cmd("service", name, "restart" if restart else "start") + " >/dev/null\n"
        if not service and kind.answers(facts):
            return nothing(f"{kind.name} enabled, running and answering")
        # set -e: a failed enable or restart ends the action at once, with systemctl's own words
        done = kind.after_restart() if restart else ""
        summary = f"restart and check {unit}" if restart else f"start and check {unit}"
        return doing(Action(summary, "set -e\n" + service + kind.wait_script() + done))
