"""One fabcelery run at a time per project and host: a lock on the server.

A deploy, an undeploy and every day-two task that changes something (restart-celery,
start-celery, stop-celery, shutdown, restart-broker) take the project's lock on each host
before they look at it: flock(1) on `/run/fabcelery/NAME.lock`, in a directory only root
can write. A second run waits for it (bounded, `bounds.lock`), its host line saying who
holds it, then gives up with that sentence and changes nothing. docs/safety.md has the
design; in short:

- A day-two task is one remote command: the lock is taken at its start and dropped when
  it ends (`locked`).
- A deploy is a probe and then many commands, each on a channel of its own. The lock is
  taken in the probe's command, which stays running after the probe (`holding`): it
  prints READY and then waits for its stdin to close, which happens when fab is done with
  the host (tasks/remote.py `Remote.close`), when fab dies, or when the connection is
  lost. The process that holds the lock lives exactly as long as the SSH channel, so the
  next run gets the lock at once after a Ctrl-C, a `kill -9` or a dropped connection.

Building the scripts and reading what they print is pure; `run_locked` is the only part
that talks to a host.
"""

from __future__ import annotations

import base64
import binascii
import functools
import getpass
import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .host_errors import HostError, RemoteCommandError
from .report import printable
from .shell import PROGRESS, cmd

if TYPE_CHECKING:
    from collections.abc import Callable

    from .remote import Remote

# /run: a tmpfs only root can write, so nobody else can plant the directory, the file or a
# link in their place (in /run/lock, which everyone may write, any local user could create
# the file first and hold the lock forever). Emptied at every boot, as a lock should be.
LOCK_DIR = "/run/fabcelery"
FD = 9
BUSY = 75                     # exit status: the lock was not got within the bound (EX_TEMPFAIL)
HOLDER = "fabcelery-lock-holder: "          # on stdout, before exit BUSY: who holds the lock
WAITING = "lock-wait "                      # a PROGRESS line: the run waits, and for whom
LEFTOVER = "leftover-wait "                 # a PROGRESS line: it waits for an earlier run's command
READY = "fabcelery-lock-ready"              # the held command's line: script done, lock held
QUIET_WAIT = 1                # a run that is just ending gets this long before we say we wait
ORIGIN_CHARS = re.compile(r"[^A-Za-z0-9._@-]")

# The tasks that take the lock (tasks/cli.py): everything that changes a host.
LOCKING_TASKS = ("deploy", "undeploy", "restart-celery", "start-celery", "stop-celery", "shutdown",
                 "restart-broker")


@dataclass(frozen=True)
class Lock:
    """The lock a run takes on a host: the project's, and what the run tells a waiting one."""

    project: str
    task: str
    wait: int                 # seconds a run waits for it (bounds.lock); 0: not at all
    origin: str = ""          # who runs it: user@machine of the fab process
    directory: str = LOCK_DIR

    @property
    def path(self) -> str:
        return f"{self.directory}/{self.project}.lock"

    @property
    def runs(self) -> str:
        """Where the commands of the run holding the lock record themselves while they run."""
        return f"{self.directory}/{self.project}.running"


def lock_path(project: str) -> str:
    return f"{LOCK_DIR}/{project}.lock"


@functools.cache
def origin() -> str:
    """user@machine of this fab process, for the holder's line on a waiting run (only the
    characters a user or host name has: it is shown on other people's terminals)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return ORIGIN_CHARS.sub("?", f"{user}@{socket.gethostname()}")[:120]


# --- the scripts ---------------------------------------------------------------------------


def _take(lock: Lock) -> list[str]:
    """sh: open the lock file on fd 9 and take the lock, waiting at most lock.wait seconds;
    say once whom we wait for; then write who holds it now into the file."""
    d, f = cmd(lock.directory), cmd(lock.path)
    who = f'"$(head -n 1 {f} 2>/dev/null) now=$(date +%s)"'
    lines = [
        f"mkdir -p -m 0755 {d} || exit 1",
        f"exec {FD}>>{f} || exit 1",
    ]
    if lock.wait <= QUIET_WAIT:
        lines.append(f"if ! flock -{'n' if lock.wait <= 0 else f'w {lock.wait}'} {FD}; then")
    else:
        lines += [
            f"if ! flock -w {QUIET_WAIT} {FD}; then",
            f"  printf '%s\\n' {cmd(PROGRESS + WAITING)}{who}",
            f"  flock -w {lock.wait - QUIET_WAIT} {FD}",
            "fi",
            f"if ! flock -n {FD}; then",
        ]
    lines += [
        f"  printf '%s\\n' {cmd(HOLDER)}{who}",
        f"  exit {BUSY}",
        "fi",
        # the holder's pid is this shell's ($$), which keeps fd 9 until the run ends
        f"printf 'pid=%s since=%s task=%s from=%s\\n' \"$$\" \"$(date +%s)\" {cmd(lock.task)} {cmd(lock.origin)} > {f}",
        *_wait_for_leftovers(lock),
    ]
    return lines


def _start_time(pid: str) -> str:
    """sh: the start time of process `pid` (field 22 of /proc/PID/stat; empty when it is gone)."""
    return f"$(cut -d' ' -f22 /proc/{pid}/stat 2>/dev/null)"


def _wait_for_leftovers(lock: Lock) -> list[str]:
    """sh: wait (bounded) until no command of an earlier run is still running. A run whose
    connection was lost lost the lock at once, but a command it had started (pip, apt) goes
    on on the host, within its bound: each command of a run records itself (`registered`),
    and the next run waits for those still alive before it probes."""
    runs, half_seconds = cmd(lock.runs), 2 * max(lock.wait, 0)
    return [
        f"for _f in {runs}/*; do",
        '  [ -f "$_f" ] || continue',
        '  _p=${_f##*/} _i=0',
        '  _want=$(head -n 1 "$_f")',
        # alive: the same start time (not a new process under a reused pid), and not a zombie
        '  while _s=$(cut -d" " -f3,22 "/proc/$_p/stat" 2>/dev/null) && [ -n "$_want" ] \\',
        '      && [ "${_s#* }" = "$_want" ] && [ "${_s%% *}" != Z ]; do',
        '    _what="pid=$_p what=$(sed -n 2p "$_f" | base64 -w0) now=$(date +%s)"',
        f"    [ $_i -eq 0 ] && printf '%s\\n' {cmd(PROGRESS + LEFTOVER)}\"$_what\"",
        f"    if [ $_i -ge {half_seconds} ]; then printf '%s\\n' {cmd(HOLDER)}\"$_what\"; exit {BUSY}; fi",
        "    _i=$((_i + 1)); sleep 0.5",
        "  done",
        '  rm -f "$_f"',
        "done",
    ]


def registered(lock: Lock) -> Callable[[str, str], str]:
    """For Remote's `wrap_each`, every command a run sends after its locked probe: the command
    records its shell's pid and start time (and its summary) while it runs, so that a next
    run whose lock came free early (a lost connection) waits for it (`_wait_for_leftovers`)."""
    def wrap(command: str, summary: str) -> str:
        record = f"{cmd(lock.runs)}/$$"
        return "\n".join([
            f"mkdir -p -m 0700 {cmd(lock.runs)}",
            f"printf '%s\\n%s\\n' \"{_start_time('$$')}\" {cmd(summary)} > {record}",
            command,
            "_rc=$?",
            f"rm -f {record}",
            'exit "$_rc"',
        ])
    return wrap


def locked(lock: Lock) -> Callable[[str], str]:
    """For Remote.run_root's `wrap`: the bounded command run while this shell holds the lock
    (a day-two task: one command). The command does not get fd 9, so nothing it starts (a
    supervisord started without systemd) can keep the lock after the run."""
    def wrap(command: str) -> str:
        return "\n".join([*_take(lock), f"{command} {FD}>&-", "exit $?"])
    return wrap


def holding(lock: Lock) -> Callable[[str], str]:
    """For Remote.start_root's `wrap`: take the lock, run the bounded command (the probe), print
    READY, then hold the lock until stdin closes (end of the run, or a lost connection)."""
    def wrap(command: str) -> str:
        return "\n".join([*_take(lock), f"{command} {FD}>&-", "rc=$?", '[ "$rc" -eq 0 ] || exit "$rc"',
                          f"echo {READY}", "exec cat >/dev/null"])
    return wrap


# --- reading what they print -----------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """Who holds the lock, as the holder wrote it into the lock file (fields may be missing:
    a run that has just taken it has not written them yet)."""

    pid: int | None = None
    since: int | None = None
    task: str = ""
    origin: str = ""
    now: int | None = None
    what: str = ""            # a command an earlier run left running (its summary)

    def describe(self) -> str:
        """'fab deploy from alice@laptop (pid 4242 on the host), since 10:03:05 UTC (42 s ago)'."""
        if self.what:
            return (f"{self.what} (pid {self.pid} on the host), left running by an earlier fabcelery run that "
                    "ended before it (its connection was lost)")
        if self.pid is None and not self.task:
            return "another fabcelery run (it has not said who it is yet)"
        parts = [f"fab {self.task or '?'}" + (f" from {self.origin}" if self.origin else "")]
        if self.pid is not None:
            parts[0] += f" (pid {self.pid} on the host)"
        if self.since is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
            ago = f" ({max(0, self.now - self.since)} s ago)" if self.now is not None else ""
            parts.append(f"since {when}{ago}")
        return ", ".join(parts)


def parse_holder(text: str) -> Holder:
    """`pid=N since=EPOCH task=T from=U@H now=EPOCH` (any order, any missing) -> Holder."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)

    def number(key: str) -> int | None:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else None

    try:
        what = printable(base64.b64decode(fields.get("what", ""), validate=True).decode("utf-8", "replace")
                         .strip())[:300]
    except (binascii.Error, ValueError):
        what = "?"
    return Holder(pid=number("pid"), since=number("since"), task=ORIGIN_CHARS.sub("?", fields.get("task", ""))[:40],
                  origin=ORIGIN_CHARS.sub("?", fields.get("from", ""))[:120], now=number("now"), what=what)


def busy_holder(exited: int | None, stdout: str) -> Holder | None:
    """Who held the lock, when the command ended because it could not get it; else None.
    Decided by the exit status and the HOLDER line together (the wrapped command's own exit
    status could be BUSY too, but it never prints that line)."""
    if exited != BUSY:
        return None
    for line in reversed(stdout.splitlines()):
        if line.startswith(HOLDER):
            return parse_holder(line[len(HOLDER):])
    return None


def waiting_line(text: str, wait: int) -> str | None:
    """The host's line for a PROGRESS line of the lock script (None: not one of ours)."""
    if text.startswith(WAITING):
        return (f"waiting for another fabcelery run on this host to finish: "
                f"{parse_holder(text[len(WAITING):]).describe()}; waiting up to {wait} s (bounds.lock)")
    if text.startswith(LEFTOVER):
        return (f"waiting for a command to finish: {parse_holder(text[len(LEFTOVER):]).describe()}; waiting up to "
                f"{wait} s (bounds.lock)")
    return None


def busy_message(holder: Holder, wait: int) -> str:
    how = f"did not finish within {wait} s (bounds.lock)" if wait > 0 else "is under way (bounds.lock is 0: no wait)"
    if holder.what:
        return (f"a command of an earlier fabcelery run {how.replace('is under way', 'still runs')}: "
                f"{holder.describe()}. Nothing was changed here; run again once it is done")
    return (f"another fabcelery run on this host {how}: {holder.describe()}. Nothing was changed here; run again "
            "once it is done")


class LockBusy(HostError):
    """Another run held the project's lock on the host for longer than bounds.lock."""

    def __init__(self, holder: Holder, wait: int):
        super().__init__(busy_message(holder, wait))
        self.holder = holder


# --- running ----------------------------------------------------------------------------------


def run_locked(remote: Remote, lock: Lock, script: str, summary: str, timeout: int, bound: str = "",
               say: Callable[[str], None] | None = None, hold: bool = False) -> str:
    """Run `script` as root while holding `lock` on the host; its stdout. `hold`: keep the lock
    after the script, until the connection closes (a deploy's probe). `say(text)` gets the
    line saying that the run waits and for whom. LockBusy when the lock was not got."""
    def progress(text: str) -> None:
        line = waiting_line(text, lock.wait)
        if line is not None and say is not None:
            say(line)

    try:
        if hold:
            return remote.start_root(script, summary, timeout=timeout, bound=bound, wrap=holding(lock),
                                     wait=lock.wait, ready=READY, progress=progress)
        return remote.run_root(script, summary, timeout=timeout, bound=bound, wrap=locked(lock), wait=lock.wait,
                               progress=progress).stdout
    except RemoteCommandError as exc:
        holder = busy_holder(exc.exited, exc.stdout)
        if holder is not None:
            raise LockBusy(holder, lock.wait) from None
        raise
