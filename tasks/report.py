"""Running a task on many hosts at once, and telling the user what happens.

Stock `fab -H a,b,c` runs hosts one after another (fabric#2156); here they run in
a bounded thread pool. Output lines are prefixed by host and written whole under a
lock, so they never interleave mid-line. One host failing does not stop the others.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import quote

from .interrupt import STOP, interruptible
from .plan import StepName

DEFAULT_PARALLEL = 10
RECAP_EACH = 20         # up to this many hosts, the recap has a line for each
MASK = "********"

# Lines of config files or command output whose value is a password (redis.conf's
# requirepass, a settings file's PASSWORD = ...): masked wherever they are shown.
SECRET_LINE = re.compile(
    r"(?im)^([-+ ]?\s*['\"]?[\w.-]*(?:password|passwd|secret|token|requirepass|masterauth)[\w.-]*['\"]?"
    r"\s*(?:=|:|\s)\s*)\S.*$"
)
URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced, as written and URL-quoted (as it appears in a broker URL)."""
    forms = {form for secret in secrets if secret for form in (secret, quote(secret, safe=""))}
    for form in sorted(forms, key=len, reverse=True):   # a longer secret first: it may contain a shorter one
        text = text.replace(form, MASK)
    return text


def mask_lines(text: str) -> str:
    """Passwords in URLs and in `password = ...`-style lines replaced, for text shown to the user."""
    return SECRET_LINE.sub(rf"\g<1>{MASK}", URL_PASSWORD.sub(rf"\g<1>{MASK}@", text))


# C0 controls but tab, DEL and the C1 controls: ESC sequences could move the cursor,
# rewrite lines or set the terminal's title
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """One line of text from a server (a log, a program's description), safe to print: every
    control character shown escaped (\\x1b), never sent to the terminal."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(frozen=True)
class Cut:
    """A step that Ctrl-C stopped part-way: how many of its actions were done."""

    step: StepName
    done: int
    total: int

    def __str__(self) -> str:
        return f"{self.step} ({self.done} of {self.total} actions done)"


@dataclass
class HostResult:
    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    error: str = ""
    notes: list[str] = field(default_factory=list)   # why something happened (shown in the recap)
    reached: bool = False         # the task got a connection to the host
    interrupted: bool = False     # Ctrl-C stopped the host's work
    cut: list[Cut] = field(default_factory=list)     # steps that Ctrl-C stopped part-way


class Reporter:
    def __init__(self, stream: TextIO | None = None, secrets: tuple[str, ...] = ()):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.secrets = secrets
        self.width = 12

    def set_hosts(self, names: list[str]) -> None:
        self.width = max([len(n) for n in names] + [4])

    def line(self, host: str, text: str) -> None:
        text = self.mask(text)
        with self.lock:
            for part in text.splitlines() or [""]:
                self.stream.write(f"{host:<{self.width}}  {part}\n")
            self.stream.flush()

    def plain(self, text: str) -> None:
        with self.lock:
            self.stream.write(self.mask(text) + "\n")
            self.stream.flush()

    def add_secrets(self, *values: str | None) -> None:
        """Values that must never be printed (passwords): from now on every line masks them."""
        with self.lock:
            self.secrets = tuple(dict.fromkeys([*self.secrets, *(v for v in values if v)]))

    def mask(self, text: str) -> str:
        return mask_secrets(text, self.secrets)

    def recap(self, results: list[HostResult], counting: str = "") -> None:
        """A line per host; past RECAP_EACH hosts, a line per host that failed, changed something or
        has something to say, and the others counted in one line. `counting`: what the figures
        count, when it is not the steps."""
        quiet = [r for r in results if not (r.failed or r.changed or r.error or r.notes)]
        named = results if len(results) <= RECAP_EACH or len(quiet) < 2 else [r for r in results if r not in quiet]
        width = max([len(r.host) for r in named] + [4])
        lines = ["", f"RECAP ({counting})" if counting else "RECAP"]
        for r in named:
            line = f"{r.host:<{width}}  ok={r.ok} changed={r.changed} failed={r.failed}"
            if r.error:
                line += f"  ({r.error.splitlines()[0]})"
            elif r.notes:
                line += f"  ({'; '.join(r.notes)})"
            lines.append(line)
        if len(named) < len(results):
            lines.append(f"{'and ' if named else ''}{len(quiet)} {'more ' if named else ''}hosts with nothing changed "
                         f"and nothing failed (ok={sum(r.ok for r in quiet)} in all)")
        self.plain("\n".join(lines))


def run_hosts(names: list[str], work: Callable[[str], HostResult], parallel: int) -> list[HostResult]:
    """work(name) on every host, at most `parallel` at a time; results in the given order.

    After Ctrl-C (tasks/interrupt.py) a host that has not started yet is not started."""

    def guarded(name: str) -> HostResult:
        if STOP.is_set():
            return HostResult(host=name, notes=["interrupted (Ctrl-C) before it started: nothing was done"])
        try:
            return work(name)
        except Exception as exc:  # a host's failure is reported, never a traceback
            return HostResult(host=name, failed=1, error=f"{type(exc).__name__}: {exc}")

    with interruptible(), ThreadPoolExecutor(max_workers=max(1, min(parallel, len(names) or 1))) as pool:
        return list(pool.map(guarded, names))


class Timer:
    def __init__(self):
        self.start = time.monotonic()

    def __str__(self) -> str:
        return f"{time.monotonic() - self.start:.1f}s"
