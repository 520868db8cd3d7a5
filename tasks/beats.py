"""Exactly one celery beat, fleet-wide: `fab status` finds every process of the project's app
that runs beat (supervisord's program celerybeat, one started by hand, a worker with -B) on
every host it asks (tasks/scripts/status-beat.sh), and marks each beat beyond the one on the
inventory's beat host EXTRA, naming both hosts: two beats send every periodic task twice.

Pure: the status script's lines in, the extra beats out (tasks/status.py marks them in the table).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .inventory import Inventory
from .report import printable

SEPARATOR = "\x1f"       # between a process's arguments (status-beat.sh)


@dataclass(frozen=True)
class BeatProcess:
    pid: int
    ppid: int
    uid: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        """Its command line, for the table (printable: it is whatever the process says)."""
        return printable(" ".join(self.argv))[:160]


def parse_beats(text: str | None) -> list[BeatProcess]:
    """status-beat.sh's lines: `PID PPID UID ARG\\x1fARG...`."""
    found = []
    for line in (text or "").splitlines():
        parts = line.split(" ", 3)
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        found.append(BeatProcess(int(parts[0]), int(parts[1]) if parts[1].isdigit() else 0, parts[2],
                                 tuple(a for a in parts[3].split(SEPARATOR) if a)))
    return found


def _celery_args(argv: tuple[str, ...]) -> tuple[str, ...] | None:
    """The arguments after `celery` when the process is Celery's command (`celery ...`,
    `python .../celery ...`, `python -m celery ...`); None for any other program."""
    if not argv:
        return None
    first = posixpath.basename(argv[0])
    if first == "celery":
        return argv[1:]
    if first.startswith("python"):
        if argv[1:3] == ("-m", "celery"):
            return argv[3:]
        if len(argv) > 1 and posixpath.basename(argv[1]) == "celery":
            return argv[2:]
    return None


def _app_of(args: tuple[str, ...]) -> str:
    for i, arg in enumerate(args):
        if arg in ("-A", "--app") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--app="):
            return arg[len("--app="):]
        if arg.startswith("-A") and len(arg) > 2:
            return arg[2:]
    return ""


def runs_beat(argv: tuple[str, ...], app: str) -> bool:
    """Whether a command line runs celery beat for this project's app (`-A` naming the app, its
    module or its package): `celery -A APP beat`, or a worker with an embedded beat (-B)."""
    args = _celery_args(argv)
    if args is None:
        return False
    named = _app_of(args).split(":")[0]
    if not named or named.split(".")[0] != app.split(".")[0]:
        return False
    return "beat" in args or ("worker" in args and ("-B" in args or "--beat" in args))


def project_beats(inventory: Inventory, text: str | None) -> tuple[BeatProcess, ...]:
    """The beats of this project among the processes found: one per beat (the children of an
    embedded beat's worker have its command line too: only the topmost counts)."""
    found = [p for p in parse_beats(text) if runs_beat(p.argv, inventory.celery.app)]
    pids = {p.pid for p in found}
    return tuple(p for p in found if p.ppid not in pids)


def beat_host(inventory: Inventory) -> str | None:
    return next((h.name for h in inventory.hosts.values() if h.has("beat")), None)


def extra_beats(inventory: Inventory, beats: dict[str, tuple[BeatProcess, ...]],
                supervised: dict[str, int | None]) -> dict[str, list[tuple[BeatProcess, str]]]:
    """Per host, each beat beyond the one that should run, with why (naming the other host).

    beats: the hosts asked, in order, each with its beats; supervised: the pid of supervisord's
    program celerybeat on each host (None: not running). The one beat kept: supervisord's on
    the inventory's beat host (or, without a beat host, the first beat found); every other beat
    is extra. An inventory without hosts (`-H` names, each with every role): one per host."""
    expected = beat_host(inventory)
    running = {host: found for host, found in beats.items() if found}
    total = sum(len(found) for found in running.values())
    kept: dict[str, BeatProcess] = {}
    for host, found in running.items():
        first = next((p for p in found if p.pid == supervised.get(host)), found[0])
        if not inventory.hosts or host == expected or (expected is None and not kept):
            kept[host] = first
    extras: dict[str, list[tuple[BeatProcess, str]]] = {}
    for host, found in running.items():
        for process in found:
            if kept.get(host) == process:
                continue
            if host in kept:
                why = f"a second celery beat on {host}, beside pid {kept[host].pid}"
            elif expected is None:
                why = f"celery beat runs on {host} and on {', '.join(kept)}"
            elif expected in running:
                why = f"celery beat runs on {host} and on {expected} (the inventory's beat host)"
            else:
                where = "not asked by this status" if expected not in beats else "where it does not run"
                why = f"celery beat runs on {host}, which is not the inventory's beat host {expected} ({where})"
            also = [h for h in running if h not in (host, expected) and h not in kept]
            if also and host not in kept:      # not a second beat beside this host's own
                why += f", and on {', '.join(also)}"
            how = ("supervisord's program celerybeat, left from before beat moved: `fab deploy` removes it"
                   if process.pid == supervised.get(host)
                   else f"started outside supervisord by uid {process.uid} ({process.command}): stop it")
            effect = "Two beats send every periodic task twice" if total > 1 else \
                "Beat belongs on the beat host only"
            extras.setdefault(host, []).append((process, f"{why}. {effect}. This one is {how}"))
    return extras
