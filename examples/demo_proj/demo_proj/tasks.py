import os
import socket
import time

from celery import shared_task
from django.conf import settings


@shared_task
def add(x, y):
    return x + y


@shared_task
def whoami():
    """Where and as whom the worker runs: the tests check it is not root."""
    return {"host": socket.gethostname(), "uid": os.getuid(), "pid": os.getpid()}


@shared_task
def sleep_then_return(seconds, value):
    time.sleep(seconds)
    return value


@shared_task(ignore_result=True)
def sleep_then_touch(seconds, name):
    """A task whose end shows on the worker's host (~/NAME), with no result backend involved."""
    time.sleep(seconds)
    with open(os.path.expanduser(f"~/{name}"), "w") as f:
        f.write(f"{time.time():.0f}\n")


@shared_task
def heartbeat():
    """Sent by beat every few seconds: proof that beat's schedule fires."""
    with open(os.path.expanduser(settings.DEMO_HEARTBEAT_FILE), "a") as f:
        f.write(f"{time.time():.0f} {socket.gethostname()}\n")


@shared_task
def note(tag, seconds=0):
    """Appends `TIME TAG` to ~/notes after `seconds`: which tasks ran, and when, on which host
    (the broker cluster's failover test counts them)."""
    time.sleep(seconds)
    with open(os.path.expanduser("~/notes"), "a") as f:
        f.write(f"{time.time():.3f} {tag}\n")


@shared_task(bind=True)
def where(self):
    """Which worker pool ran it: its node name (POOL@HOST), the queue it came from, and the
    pool's own variable EXPORT_DIR (the tests' pools set it in their program's environment)."""
    return {"node": self.request.hostname, "queue": (self.request.delivery_info or {}).get("routing_key"),
            "host": socket.gethostname(), "export_dir": os.environ.get("EXPORT_DIR")}


@shared_task(acks_late=True, ignore_result=True)
def handed_back(seconds, tag):
    """An acks_late task that writes each run's start, a tick each half second and its end to
    ~/handback-TAG as `TIME PID WHAT`: how often it started, whether a run overlapped another,
    and that it ran to its end once (the restart's hand-back test reads it)."""
    path = os.path.expanduser(f"~/handback-{tag}")

    def line(what):
        with open(path, "a") as f:
            f.write(f"{time.time():.3f} {os.getpid()} {what}\n")

    line("start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        line("tick")
    line("end")
