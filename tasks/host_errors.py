"""What goes wrong with a host, as the SSH layer (tasks/remote.py) raises it and the runner
and the day-two tasks catch it: every one is a message for the user, in one line."""

from __future__ import annotations

from collections.abc import Callable


class HostError(Exception):
    """Something went wrong on or with a host; the message is for the user, no traceback."""


class RemoteCommandError(HostError):
    """A command that ran and failed: `exited` its exit status, `stdout` what it printed (for
    callers that read a failure's kind from them, never from the message)."""

    def __init__(self, summary: str, output: str, exited: int | None = None, stdout: str = ""):
        super().__init__(f"{summary}: {output}" if output else summary)
        self.output = output
        self.exited = exited
        self.stdout = stdout


class ConnectionLost(HostError):
    """The connection to the host ended while `summary` was under way (the SSH session was
    killed, the network dropped, the host stopped answering): whether the action finished
    on the host is not known."""

    def __init__(self, summary: str, reason: str):
        super().__init__(f"{summary}: {reason}")
        self.summary, self.reason = summary, reason

    def line(self, task: str) -> str:
        """For the host's line: what was under way, that the connection was lost, and what to do."""
        return f"{self}; the next {task} completes the work"


LOST = "the connection to the host was lost while this was under way"


def command_error(summary: str, stdout: str, stderr: str, exited: int,
                  mask: Callable[[str], str]) -> RemoteCommandError:
    """A failed command, told by the last lines of its stderr (or, if empty, its stdout), masked."""
    output = stderr.strip() or stdout.strip()
    tail = "\n".join(output.splitlines()[-20:])
    return RemoteCommandError(summary, mask(tail) or f"exit status {exited}", exited, stdout)
