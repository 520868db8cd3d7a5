"""Run each fabcelery task once for all its hosts, instead of once per host; and a command
line that ends the way a Unix tool's does.

Fabric's executor turns `fab -H a,b,c task` into three calls made one after another
(fabric#2156). Ours makes one call and hands the host names to the task, which runs
them concurrently (tasks.report.run_hosts). The collection selects it through Invoke's
documented `tasks.executor_class` setting (ns.configure in tasks/cli.py), which
`collection_executor()` makes Invoke read from the collection too, so that it holds for
`fab` in this checkout, for the `fabcelery` command and for a user's own fabfile that
imports the collection. A task of the user's own beside ours keeps Fabric's way: one call
per host, each with its Connection.

Invoke ends a bad command line (an unknown flag, a flag without its value) with exit
status 1, a bad number (`--parallel abc`) with a ValueError traceback, and a closed pipe
(`fab --list | head -1`) with a BrokenPipeError traceback. `strict_command_line()`, run
when the fabfile is loaded (before Invoke parses the task arguments), makes the first
two one line and exit status 2, as for any other usage error, and the last a quiet end.
"""

from __future__ import annotations

import functools
import os
import re
import sys

from fabric import Executor as FabricExecutor
from invoke import Call, Exit, ParseError
from invoke import Executor as InvokeExecutor
from invoke.parser import Argument
from invoke.program import Program

USAGE_ERROR = 2
BROKEN_PIPE = 141      # what the shell reports for `cat` killed by SIGPIPE


def _quiet_broken_pipe() -> Exit:
    """The reader went away (`fab status --json | head`): stop quietly, as `cat` does, rather
    than with a traceback; and keep Python from a second error when it flushes at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return Exit(code=BROKEN_PIPE)


PACKAGE = __name__.rpartition(".")[0]   # tasks in this checkout, fabcelery installed


def _ours(call) -> bool:
    task = call.task if isinstance(call, Call) else call
    return getattr(task.body, "__module__", "").startswith(PACKAGE + ".")


class FleetExecutor(FabricExecutor):
    def expand_calls(self, calls, apply_hosts=True):
        host_str = self.core[0].args.hosts.value
        self.config["fabcelery_hosts"] = [h.strip() for h in host_str.split(",") if h.strip()] if host_str else []
        expanded = []
        for call in calls:   # ours: one call for all hosts; a user's own task: one per host (Fabric's)
            expanded += InvokeExecutor.expand_calls(self, [call]) if _ours(call) else \
                FabricExecutor.expand_calls(self, [call], apply_hosts)
        return expanded

    def execute(self, *tasks):
        try:
            return super().execute(*tasks)
        except BrokenPipeError:
            raise _quiet_broken_pipe() from None


def _set_value(original):
    @functools.wraps(original)
    def set_value(self: Argument, value, cast: bool = True):
        try:
            return original(self, value, cast)
        except ValueError:
            flag = "--" + self.name.replace("_", "-")
            kind = "a whole number" if self.kind is int else f"a {getattr(self.kind, '__name__', self.kind)}"
            raise ParseError(f"{flag} takes {kind}, not {value!r}") from None
    return set_value


def _usage_errors(original):
    @functools.wraps(original)
    def parse(self: Program, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        except ParseError as exc:
            text = str(exc)
            flag = re.match(r"Flag <Argument: (\w+)", text)
            if flag and "needed value" in text:
                text = f"--{flag[1].replace('_', '-')} needs a value"
            raise Exit(f"fab: {text} (fab --help, fab --help TASK)", code=USAGE_ERROR) from None
        except BrokenPipeError:
            raise _quiet_broken_pipe() from None
    return parse


def strict_command_line() -> None:
    """Usage errors: one line, exit status 2; a closed pipe: a quiet end (see the module's text)."""
    if getattr(Program, "_fabcelery_strict", False):
        return
    Argument.set_value = _set_value(Argument.set_value)
    Program.parse_tasks = _usage_errors(Program.parse_tasks)
    Program.parse_cleanup = _usage_errors(Program.parse_cleanup)   # --help, --list and their output
    Program._fabcelery_strict = True


def _executor_of_collection(original):
    @functools.wraps(original)
    def execute(self: Program):
        if self.config.tasks.executor_class is None:   # a config file or the environment wins, as in Invoke
            named = self.collection.configuration().get("tasks", {}).get("executor_class")
            if named:
                self.config.tasks.executor_class = named
        return original(self)
    return execute


def collection_executor() -> None:
    """Invoke reads `tasks.executor_class` from config files and the environment, not from
    the collection's own configuration (ns.configure): make it read that too."""
    if getattr(Program, "_fabcelery_collection_executor", False):
        return
    Program.execute = _executor_of_collection(Program.execute)
    Program._fabcelery_collection_executor = True
