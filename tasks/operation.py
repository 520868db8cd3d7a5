"""What a day-two task is on one host (tasks/day_two.py runs it): an Operation, the program it runs
(tasks/scripts/*.sh with their values as --NAME VALUE arguments) and how its sections are read
into an Outcome; and the readings that several tasks share (supervisorctl status, the
workers' ping answers, the last lines of an output).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .host_status import HostStatus
from .report import HostResult
from .runner import Sections, parse_sections
from .scripts import shell_program
from .supervisor import ProgramStatus, parse_status
from .target import Target


@dataclass
class Outcome:
    """What happened on one host: lines for the user, and whether anything changed or failed."""

    lines: list[str] = field(default_factory=list)
    changed: bool = False
    failed: str = ""              # why, in one line; empty when it worked
    status: HostStatus | None = None             # status: the host's programs and broker
    before: dict[str, int | None] = field(default_factory=dict)   # restart: each program's pid before
    after: dict[str, int | None] = field(default_factory=dict)    # ... and after
    report: dict = field(default_factory=dict)    # check: what the canary script said (tasks/check.py)


@dataclass
class OperationResult(HostResult):
    """A day-two task's result on one host: the recap's counts and what its program found."""

    outcome: Outcome | None = None


@dataclass(frozen=True)
class Operation:
    """One task on one host: the program to run, and how to read its sections."""

    step: str                                     # the label of the host's output lines
    summary: str                                  # what is about to happen ("" = say nothing)
    script: str = ""                              # "" = nothing to run (and no SSH at all)
    read: Callable[[Sections], Outcome] | None = None
    timeout: int = 60
    skip: str = ""                                # why there is nothing to do here
    timed: bool = True                            # add the time it took to the first line
    locks: str = ""                               # the task's name, if it takes the project's lock (tasks/lock.py)

    def interpret(self, output: str) -> Outcome:
        """What the program's printed output says (ScriptOutputError if it did not run through)."""
        return self.read(parse_sections(output))


def host_program(target: Target, *names: str, options: dict[str, object] | None = None,
             programs: list[str] = ()) -> str:
    """The day-two program made of lib.sh and `names`, given the project's supervisord (and
    `options`) as `--NAME VALUE` arguments, then the programs' names."""
    layout, project = target.layout, target.inventory.project
    values = {"user": project.user, "venv": project.virtualenv, "conf": layout.supervisord_conf,
              "pidfile": layout.supervisord_pid, **(options or {})}
    args = [part for name, value in values.items() for part in (f"--{name}", value)]
    return shell_program("lib.sh", *names, args=[*args, "--", *programs])


def program_states(text: str, programs: list[str]) -> dict[str, ProgramStatus | None]:
    """Each expected program's status (a `group:name` program counts for its group)."""
    found = parse_status(text)
    states: dict[str, ProgramStatus | None] = {}
    for program in programs:
        states[program] = next((p for p in found if p.name == program or p.name.startswith(program + ":")), None)
    return states


def pids_of(text: str, programs: list[str]) -> dict[str, int | None]:
    return {name: (p.pid if p else None) for name, p in program_states(text, programs).items()}


def not_running_of(text: str, programs: list[str]) -> list[str]:
    problems = []
    for name, p in program_states(text, programs).items():
        if p is None:
            problems.append(f"{name} is not configured in supervisord")
        elif p.state != "RUNNING":
            problems.append(f"{name} is {p.state}" + (f" ({p.description})" if p.description else ""))
    return problems


def supervisord_error(text: str) -> tuple[bool, str]:
    """supervisorctl's complaint when it cannot reach supervisord, made readable, and whether
    it says that supervisord is not running."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "no such file" in first or "refused connection" in first or "SHUTDOWN_STATE" in first:
        return True, f"supervisord is not running ({first})"
    return False, first


def last_lines(text: str, count: int = 5) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def ping_answers(text: str) -> dict[str, str]:
    """'->  celery@h: OK\\n        pong\\n->  exports@h: OK ...' -> {'celery@h': 'pong', ...}."""
    answers: dict[str, str] = {}
    node = None
    for line in text.splitlines():
        match = re.match(r"\s*->\s+(\S+?):\s+OK", line)
        if match:
            node = match.group(1)
            answers[node] = "OK"
        elif node and line.strip():
            answers[node] = line.strip() if answers[node] == "OK" else answers[node]
            node = None
    return answers

