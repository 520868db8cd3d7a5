"""Where invoke writes a remote command's stdout while it runs (tasks/remote.py): the PROGRESS
lines a script prints go to a callback as they come, and a held command's `ready` line is told.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .shell import PROGRESS


class ReadyStream:
    """What invoke writes a held command's stdout to (Remote.start_root): the text before the
    line `ready` is kept, `ready` sets an event, PROGRESS lines go to `progress` as they come."""

    def __init__(self, ready: str, progress: Callable[[str], None] | None = None):
        self.marker = ready
        self.progress = progress
        self.partial = ""
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.ended = threading.Event()      # set when ready, or when the command ended

    @property
    def before(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def write(self, data: str) -> int:
        if self.ready.is_set():
            return len(data)
        self.partial += data
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            if line == self.marker:
                self.ready.set()
                self.ended.set()
                break
            if line.startswith(PROGRESS) and self.progress is not None:
                self.progress(line[len(PROGRESS):])
            self.lines.append(line)
        return len(data)

    def flush(self) -> None:
        pass



class ProgressStream:
    """What invoke writes a command's stdout to: PROGRESS lines go to `callback` as they come."""

    def __init__(self, callback: Callable[[str], None]):
        self.callback = callback
        self.partial = ""

    def write(self, data: str) -> int:
        self.partial += data
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            if line.startswith(PROGRESS):
                self.callback(line[len(PROGRESS):])
        return len(data)

    def flush(self) -> None:
        pass

