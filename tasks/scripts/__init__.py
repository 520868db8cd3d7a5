"""The programs that run on the servers, each a file of its own, sent as one argument.

    root_python("supervisor_status.py", socket_path)
    shell_program("lib.sh", "stop.sh", args=["--user", "arches", ..., "--", "celery"])

They are read once per run; `make lint` checks them as the rest of the code (ruff for the
Python ones, shellcheck for the sh ones, which run under the servers' /bin/sh, dash).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources

from ..shell import cmd

# Root runs only system binaries: Debian's Python, isolated (-I: no environment
# variables, no user site, not the current directory) and without site (-S), so that
# nothing outside the standard library is ever imported.
SYSTEM_PYTHON = "/usr/bin/python3"


@functools.cache
def text(name: str) -> str:
    """A script of this directory, as it is run: alone (`-c`), so a line `from .NAME import ...`
    (what a unit test importing it as a module reads) becomes NAME.py's own text."""
    lines = resources.files(__package__).joinpath(name).read_text().splitlines(keepends=True)
    return "".join(text(f"{line.split()[1][1:]}.py") if line.startswith("from .") else line for line in lines)


def shell_function(name: str, script: str = "lib.sh") -> str:
    """The definition of a function of a sh script of this directory, for a program built in
    Python that needs it: written once, in the script. One line (`NAME() { ...; }`), or from a
    line `NAME() {` to the first line `}`."""
    lines = text(script).splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{name}() {{ ") and line.endswith(" }"):
            return line
        if line == f"{name}() {{":
            end = lines.index("}", i)
            return "\n".join(lines[i:end + 1])
    raise LookupError(f"{script} has no function {name}")


def pid_alive(pidfile: str) -> str:
    """A test: the process of this pid file runs (lib.sh's pid_alive: the file may lie in a
    directory of the project user's, so it is read without following a link)."""
    return f"{{ {shell_function('pid_alive')}; pid_alive {cmd(pidfile)}; }}"


def root_python(name: str, *args: object) -> str:
    """A script of this directory run as root by the system's Python."""
    return cmd(SYSTEM_PYTHON, "-I", "-S", "-c", text(name), *args)


def shell_program(*names: str, args: Sequence[object] = ()) -> str:
    """sh scripts of this directory joined into one program, after sections.sh (the output
    protocol, tasks/runner.py) and ending with its `end`; run as `sh -c PROGRAM NAME ARGS...`,
    so that every value reaches it as an argument, quoted, never as shell text."""
    body = "\n".join(text(name) for name in ("sections.sh", *names)) + "end\n"
    return cmd("sh", "-c", body, names[-1], *args)


def inline_program(body: str) -> str:
    """A program written in Python (its commands are the data), with the same protocol."""
    return "\n".join([text("sections.sh"), body, "end"]) + "\n"


def set_owner_mode(path: str, owner: str, group: str, mode: str, kind: str = "file") -> str:
    """Give an existing file or directory back its owner, group and mode, through a descriptor
    opened without following a link (a link in its place is refused)."""
    return root_python("nofollow.py", "fix", owner, group, mode, kind, path)


def install_nofollow(source: str, owner: str, group: str, mode: str, target: str) -> str:
    """Put SOURCE's content at TARGET (a new file renamed onto it), never through a link."""
    return root_python("nofollow.py", "install", source, owner, group, mode, target)
