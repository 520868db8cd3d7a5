"""apt, waiting (bounded) for its lock.

A fresh cloud VM runs apt at first boot (unattended-upgrades); apt-get then fails at once
with `Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812
(unattended-upgr)`. Every apt-get here tries again while the lock is held, for at most
`bounds.apt_lock` seconds in all, and says on the host's line who holds it and for how
long it has waited. The holder is named by apt itself (its own F_GETLK), so every lock
apt takes counts: dpkg's frontend lock and lock, the lists lock of `apt-get update`, the
archives lock. After the bound, the script fails with that sentence, and nothing was
installed: apt had not started.

An apt stopped at its own bound (tasks/bounds.py) may leave dpkg half-way; the next
apt-get then asks for `dpkg --configure -a`, which is run once, before apt-get again.
"""

from __future__ import annotations

from .shell import PROGRESS, cmd

LOCK_EXIT = 75      # EX_TEMPFAIL: apt's lock stayed held for the whole bound
PROGRESS_EVERY = 10     # seconds between two "waiting for apt's lock" lines


def apt_script(*commands: tuple[str, ...], lock_timeout: int) -> str:
    """A POSIX-sh script running each apt-get command (its arguments, without `apt-get`) in
    turn, each waiting for apt's lock while another process holds it. `lock_timeout` bounds
    the time spent waiting, over all the commands (not the time apt itself works)."""
    lines = [
        "export DEBIAN_FRONTEND=noninteractive",
        "_err=$(mktemp) || exit 1",
        "trap 'rm -f \"$_err\"' EXIT",
        "_waited=0 _said=-1000 _healed=",        # seconds spent waiting for the lock, over all the commands
        "apt_get() {",
        "  _since=",
        "  while :; do",
        # DPkg::Lock::Timeout=0: apt's own default, made explicit; we do the waiting, so we can say so
        '    apt-get -o DPkg::Lock::Timeout=0 "$@" >/dev/null 2>"$_err" &&',
        '      { [ -z "$_since" ] || _waited=$((_waited + $(date +%s) - _since)); return 0; }',
        "    _rc=$?",
        # an apt stopped at its bound (or killed) mid-install: apt asks for this first, once
        "    if grep -q 'dpkg --configure -a' \"$_err\" && [ -z \"$_healed\" ]; then",
        "      _healed=1; dpkg --configure -a >/dev/null 2>\"$_err\" || { cat \"$_err\" >&2; return 1; }",
        "      continue",
        "    fi",
        "    grep -q 'Could not get lock' \"$_err\" || { cat \"$_err\" >&2; return $_rc; }",
        "    _holder=$(sed -n 's/.*Could not get lock .*\\. It is held by process \\([0-9][0-9]*\\) (\\(.*\\)).*/"
        "\\2 (pid \\1)/p' \"$_err\" | head -n 1)",
        '    _holder=${_holder:-another process}',
        '    _now=$(date +%s); _since=${_since:-$_now}; _total=$((_waited + _now - _since))',
        f'    if [ "$_total" -ge {int(lock_timeout)} ]; then',
        "      echo \"waiting for apt's lock, held by $_holder, gave up after $_total s "
        "(bounds.apt_lock, --apt-lock-timeout); nothing was installed\" >&2",
        f"      return {LOCK_EXIT}",
        "    fi",
        f'    if [ $((_total - _said)) -ge {PROGRESS_EVERY} ]; then',
        f"      echo \"{PROGRESS}waiting for apt's lock, held by $_holder, $_total s\"; _said=$_total",
        "    fi",
        "    sleep 1",
        "  done",
        "}",
    ]
    for args in commands:
        lines.append("apt_get " + cmd(*args) + " || exit $?")
    return "\n".join(lines)


def install_script(packages: list[str], lock_timeout: int) -> str:
    """apt-get update, then one install transaction for every package (apt's start-up and its
    lists dominate the cost)."""
    return apt_script(("update", "-qq"), ("install", "-y", "-qq", "--no-install-recommends", *packages),
                      lock_timeout=lock_timeout)
