"""Resources of systemd: a unit of fabcelery's (its file is the configs step's: present here, it
is enabled and systemd told of a new file), and a timer with the unit files it runs by."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import Action
from .probe import Facts, ProbeSpec, union_of
from .resources import Diff, Refused, doing, nothing
from .resources_files import File
from .shell import cmd


@dataclass(frozen=True)
class Unit:
    """A systemd unit of fabcelery's, with its file. Present (the file is the configs step's):
    systemd reads the file anew when it changed (`reload`), and the unit is enabled, to start
    at boot; what starts it is the step's own business. Absent: stopped (its own
    TimeoutStopSec bounds the stop: supervisord's warm shutdown of its programs), disabled,
    its file removed and systemd told. On a host without systemd, `stop` is what stops it."""

    name: str
    path: str
    stop: str = ""                # sh that stops the service when it runs outside systemd
    present: bool = False
    reload: bool = False          # present: its file was changed by this deploy

    def needs(self) -> ProbeSpec:
        return ProbeSpec(paths=(self.path,), services=(self.name,))

    def diff(self, facts: Facts) -> Diff:
        if self.present:
            return self._enabled(facts)
        known = facts.services.get(self.name, {})
        running = facts.systemd and known.get("active") not in (None, "", "inactive", "failed")
        has_file = facts.paths.get(self.path) is not None
        lines = ["set -e"]
        if self.stop:
            lines.append(self.stop)
        if has_file and facts.systemd:
            lines.append(cmd("systemctl", "disable", "--now", "--quiet", self.name))
        elif running:       # its file already gone (an undeploy cut off): stop what still runs
            lines.append(cmd("systemctl", "stop", self.name))
        if has_file:
            lines.append(cmd("rm", "-f", "--", self.path))
            if facts.systemd:
                lines.append(cmd("systemctl", "daemon-reload"))
        if len(lines) == 1:
            return nothing(f"{self.name} absent")
        return doing(Action(f"stop and remove {self.name}", "\n".join(lines)))

    def _enabled(self, facts: Facts) -> Diff:
        if not facts.systemd:
            return nothing(f"no systemd: {self.name} is not used")
        actions = [Action("systemctl daemon-reload", "systemctl daemon-reload", quick=True)] if self.reload else []
        if not facts.service_enabled(self.name):
            actions.append(Action(f"enable {self.name} (starts at boot)",
                                  cmd("systemctl", "enable", "--quiet", self.name), quick=True))
        return doing(*actions) if actions else nothing(f"{self.name} enabled")


@dataclass(frozen=True)
class Timer:
    """A systemd timer of fabcelery's, enabled and started, with the unit files it runs by
    (File resources with their content, uploaded by their own diff): when one of them changes,
    systemd reloads them and the timer starts anew. Absent: see Unit. `why`: what it is for, in
    the refusal on a host without systemd."""

    name: str
    files: tuple[File, ...] = ()
    why: str = ""
    present: bool = True

    def needs(self) -> ProbeSpec:
        return union_of([ProbeSpec(services=(self.name,)), *(f.needs() for f in self.files)])

    def diff(self, facts: Facts) -> Diff:
        if not self.present:
            raise ValueError("a timer goes as a Unit, absent")
        if not facts.systemd:
            raise Refused(f"{self.why or self.name} runs from a systemd timer ({self.name}), and systemd is not "
                          "PID 1 on this host")
        changed = any(f.diff(facts).actions for f in self.files)
        if changed:
            return doing(Action(f"start {self.name} anew", "\n".join([
                "set -e", cmd("systemctl", "daemon-reload"), cmd("systemctl", "enable", "--quiet", self.name),
                cmd("systemctl", "restart", self.name)]), quick=True))
        if not facts.service_enabled(self.name) or not facts.service_active(self.name):
            return doing(Action(f"enable and start {self.name}",
                                cmd("systemctl", "enable", "--now", "--quiet", self.name), quick=True))
        return nothing(f"{self.name} enabled and active")
