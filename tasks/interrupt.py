"""Ctrl-C: no new action starts; the ones under way finish; every host says what was done.

The first SIGINT sets STOP. Each host checks it before every step and every action
(tasks/deploy.py), and a host still waiting for its turn does not start; a running
action is left to finish within its bound, so nothing is cut off half-way by us (a cut
that comes anyway, a lost connection, is what the pending record is for). A second
Ctrl-C quits at once: what runs on the servers then finishes there, under its own
`timeout`, and the next deploy completes the rest.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

STOP = threading.Event()
EXIT_STATUS = 130      # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


class Interrupted(Exception):
    """Ctrl-C came: the host starts nothing more."""


def check() -> None:
    if STOP.is_set():
        raise Interrupted


def _say(text: str) -> None:
    # os.write, not print: the handler may run while the main thread holds the output's lock
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def _handler(signum, frame) -> None:
    if STOP.is_set():
        _say("\nCtrl-C again: quitting now; what runs on the servers finishes there, within its bound, "
             "and running the task again completes the rest\n")
        os._exit(EXIT_STATUS)
    STOP.set()
    _say("\nCtrl-C: no new action will start; the ones under way finish (Ctrl-C again to quit at once)\n")


@contextmanager
def interruptible():
    """Within this block (in the main thread), Ctrl-C sets STOP instead of raising KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
