"""supervisord's event listener that ends a worker's warm shutdown when its time is up.

supervisord stops a worker with TERM (Celery's warm shutdown: running tasks finish) and
kills it after stopwaitsecs. With Celery 5.5 or later, a cold shutdown (QUIT) hands every
task still running back to the broker (those with acks_late: their message is not yet
acknowledged) before the worker exits; a KILL would leave it unacknowledged (Redis gives it
back only after visibility_timeout). So this listener, told by supervisord that a worker is
stopping, sends that worker QUIT once the warm shutdown's time is up, and supervisord's
stopwaitsecs is that time plus a grace for the cold shutdown (tasks/shutdown.py decides).

    python handback.py PROGRAM=SECONDS=LOG ...

Run by supervisord (as the project user, by the virtualenv's Python) for the worker programs
named; each line it writes goes to that worker's log. Standard library only.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


def parse(argv: list[str]) -> dict[str, tuple[float, str]]:
    """{program: (seconds, log)} from PROGRAM=SECONDS=LOG arguments."""
    table = {}
    for arg in argv:
        name, seconds, log = arg.split("=", 2)
        table[name] = (float(seconds), log)
    return table


def fields(line: str) -> dict[str, str]:
    """supervisor's `key:value key:value` header or payload line."""
    return dict(part.split(":", 1) for part in line.split() if ":" in part)


def started(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): the same pid, the same process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def note(log: str, text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with open(log, "a") as f:
            f.write(f"[{stamp}: WARNING/fabcelery] {text}\n")
    except OSError:
        print(text, file=sys.stderr, flush=True)


class Listener:
    def __init__(self, table: dict[str, tuple[float, str]]):
        self.table = table
        self.timers: dict[str, threading.Timer] = {}
        self.lock = threading.Lock()

    def stopping(self, name: str, pid: int) -> None:
        seconds, log = self.table[name]
        since = started(pid)
        timer = threading.Timer(seconds, self.time_up, (name, pid, since, seconds, log))
        timer.daemon = True
        with self.lock:
            self.cancel(name)
            self.timers[name] = timer
        timer.start()

    def cancel(self, name: str) -> None:
        timer = self.timers.pop(name, None)
        if timer:
            timer.cancel()

    def time_up(self, name: str, pid: int, since: str | None, seconds: float, log: str) -> None:
        with self.lock:
            self.timers.pop(name, None)
        if since is None or started(pid) != since:
            return          # gone already (or another process has its number now)
        try:
            os.kill(pid, signal.SIGQUIT)
        except OSError:
            return
        note(log, f"{name} (pid {pid}) is still stopping after {seconds:g} s of warm shutdown: sent QUIT, "
                  "Celery's cold shutdown hands the tasks still running back to the broker (acks_late)")

    def event(self, header: dict[str, str], payload: str) -> None:
        name = header.get("eventname", "")
        body = fields(payload)
        program = body.get("processname", "")
        if program not in self.table or not name.startswith("PROCESS_STATE_"):
            return
        if name == "PROCESS_STATE_STOPPING" and body.get("pid", "").isdigit():
            self.stopping(program, int(body["pid"]))
        else:
            with self.lock:
                self.cancel(program)


def main(argv: list[str]) -> None:
    listener = Listener(parse(argv))
    stdin, stdout = sys.stdin.buffer, sys.stdout
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return
        header = fields(line.decode("utf-8", "replace"))
        payload = stdin.read(int(header.get("len", "0"))).decode("utf-8", "replace")
        try:
            listener.event(header, payload)
        finally:
            stdout.write("RESULT 2\nOK")
            stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
