"""Building shell commands: every value that reaches a remote shell is quoted here."""

from __future__ import annotations

import shlex

# A line a remote script prints on stdout to tell the user how it is getting on (e.g. while it
# waits for apt's lock); shown on the host's line as it comes (tasks/remote.py), not at the end.
PROGRESS = "fabcelery-progress: "


def cmd(*parts: object) -> str:
    """One shell command from its arguments, each quoted."""
    return " ".join(shlex.quote(str(part)) for part in parts)


def sh_c(script: str) -> str:
    """Run a whole (compound) script in one shell, so `sudo` covers all of it.

    Fabric's `sudo("a && b")` would run only `a` as root.
    """
    return "sh -c " + shlex.quote(script)


def as_user(user: str, home: str, *parts: object) -> str:
    """A command run as `user` from a root shell, with that user's HOME (pip caches there)."""
    return cmd("runuser", "-u", user, "--", "env", f"HOME={home}", *parts)


# Marks, on stderr, which script of a batch failed (see batch()).
BATCH_FAILED = "fabcelery-batch-failed:"


def batch(scripts: list[str]) -> str:
    """Several scripts as one: each in its own subshell (its `exit` ends only itself), in
    order, stopping at the first that fails, whose index is then the last line on stderr.
    One remote command instead of one each saves a round trip and a sudo per script."""
    return "\n".join(f"(\n{script}\n) || {{ rc=$?; echo {BATCH_FAILED}{index} >&2; exit $rc; }}"
                     for index, script in enumerate(scripts))


def batch_failure(stderr: str) -> tuple[int | None, str]:
    """(index of the failed script or None, stderr without the mark)."""
    kept, index = [], None
    for line in stderr.splitlines():
        if line.startswith(BATCH_FAILED) and line[len(BATCH_FAILED):].isdigit():
            index = int(line[len(BATCH_FAILED):])
        else:
            kept.append(line)
    return index, "\n".join(kept)


def through_private_file(script: str, path: str, command: str) -> str:
    """Write `script` into a new file `path` that only the login user can read (noclobber: a
    file already there, or a link, is not written through), run `command` (which runs the file),
    remove the file, and exit with the command's status. For sudo, which logs its whole command
    line: the script stays off it, and one short line is logged per command."""
    quoted = shlex.quote(path)
    return (f"(umask 077 && set -C && printf %s {shlex.quote(script)} > {quoted}) && "
            f"{{ {command}; _rc=$?; rm -f {quoted}; exit \"$_rc\"; }}")
