"""The command line's own rules, beside Invoke's parser (tasks/executor.py has the rest).

- A task's short flags come from one table (SHORT), not from the first free letter of
  each name: the same letter means the same on every task (`-P` is --parallel
  everywhere), and no task has a letter of Fabric's or Invoke's own flags (-d --debug,
  -p --pty, -r --search-root, ...), which would mean one thing before the task name and
  another after it.
- A core short flag after a task name is refused (`fab deploy -d`: 0.1 took it for
  --dry-run, Invoke for --debug), as is Invoke's --dry/-R, which would print the remote
  scripts instead of running them: the tasks' own --dry-run shows what would change.
- A misspelt task name gets the nearest one (`did you mean 'status'?`).
- A `-H` name is an inventory name or an SSH destination, [user@]host[:port] (check_destinations).
Each is one line and exit status 2, before anything connects.
"""

from __future__ import annotations

import difflib
import functools

import invoke
from invoke import Exit, ParseError
from invoke.program import Program

from .executor import USAGE_ERROR
from .inventory import HOST_NAME, UNIX_NAME, InventoryError

SHORT = {"parallel": "P", "json": "j", "lines": "n"}


class Task(invoke.Task):
    def __init__(self, *args, **kwargs):
        kwargs["auto_shortflags"] = False
        super().__init__(*args, **kwargs)

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        short = SHORT.get(opts["names"][0])
        if short:
            opts["names"].append(short)
        return opts


task = functools.partial(invoke.task, klass=Task)


def _misspelt(program: Program) -> None:
    tokens = program.core.unparsed
    # the names from task_names: building the contexts here would use up the tasks' help texts
    names = [name for name, aliases in program.collection.task_names.items() for name in (name, *aliases)]
    if tokens and not tokens[0].startswith("-") and tokens[0] not in names:
        near = difflib.get_close_matches(tokens[0], names, n=1, cutoff=0.6)
        hint = f": did you mean '{near[0]}'?" if near else ""
        binary = program.binary
        raise Exit(f"{binary}: no task '{tokens[0]}'{hint} ({binary} --list shows them all)", code=USAGE_ERROR)


def _core_flag_after_task(program: Program) -> None:
    contexts = program.parser.contexts   # task names and aliases -> their flags
    core = program.initial_context.flags
    current = None
    for token in program.core.unparsed:
        if token in contexts:
            current = token
        elif current and token.startswith("-") and not token.startswith("--") and token[:2] in core \
                and token[:2] not in contexts[current].flags:
            binary = program.binary
            raise Exit(f"{binary}: {token[:2]} after '{current}' is not one of its flags ({binary} --help {current}); "
                       f"{binary}'s own flags go before the task name", code=USAGE_ERROR)


def _dry(program: Program) -> None:
    if program.args.dry.value or any(token in ("--dry", "-R") for token in program.core.unparsed):
        raise Exit(f"{program.binary}: --dry (-R) is Invoke's echo-only mode and is refused here; "
                   "to see what a deploy or undeploy would change, run it with --dry-run", code=USAGE_ERROR)


def _checked(original):
    @functools.wraps(original)
    def parse_tasks(self: Program, *args, **kwargs):
        _dry(self)
        _misspelt(self)
        try:
            result = original(self, *args, **kwargs)
        except (Exit, ParseError):
            _core_flag_after_task(self)   # `fab deploy -p 3`: -p taken as --pty, then '3' as a task
            raise
        _core_flag_after_task(self)
        return result
    return parse_tasks


def checked_command_line() -> None:
    """The rules of the module's text, for every Program (`fab`, `fabcelery`)."""
    if getattr(Program, "_fabcelery_checked", False):
        return
    Program.parse_tasks = _checked(Program.parse_tasks)
    Program._fabcelery_checked = True


def check_destinations(names: list[str]) -> None:
    """`fab -H` names: each an inventory name or an SSH destination [user@]host[:port]; else InventoryError."""
    bad = []
    for name in names:
        user, _, rest = name.rpartition("@") if "@" in name else ("", "", name)
        host, _, port = rest.partition(":")
        if (user and not UNIX_NAME.fullmatch(user)) or not HOST_NAME.fullmatch(host) \
                or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            bad.append(repr(name))
    if bad:
        raise InventoryError(
            f"-H: {', '.join(bad)} is not a host name or SSH destination ([user@]host[:port]; letters, digits, "
            "'.', '-', '_'). Nothing was changed."
        )

