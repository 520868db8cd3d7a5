"""How long anything may take: every remote action has a bound, so nothing waits forever.

A bound is enforced twice. On the server, the action's script runs under coreutils'
`timeout`, which stops the whole process group (apt, pip, rabbitmqctl ...) once the
bound is hit, so nothing keeps running there, holding apt's lock. Here, the command
has a bound a little longer, for a host that stopped answering altogether; and an SSH
keepalive (tasks/remote.py) notices such a host within KEEPALIVE_INTERVAL *
KEEPALIVE_COUNT seconds, long before a 15-minute pip bound would.

The defaults can be changed per inventory (`bounds:`), and apt's lock also with
`fab deploy --apt-lock-timeout SECONDS`. Deciding which bound an action gets is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .plan import StepName

# `timeout -k`: after the bound, TERM; this much later, KILL
KILL_AFTER = 5
# the local bound is the remote one plus this: the server gets to stop the action and say so
LOCAL_MARGIN = 15
# the verify script's own deadline (tasks.supervisor.plan_verify): its bound is longer
VERIFY_WAIT = 120
BEAT_STOPWAITSECS = 60       # templates/celerybeat.conf.j2


@dataclass(frozen=True)
class Bounds:
    """Seconds. Each is an inventory key of `bounds:` (docs/safety.md lists them)."""

    connect: int = 10          # TCP connect, SSH banner and login
    probe: int = 60            # the probe: one read-only script
    quick: int = 60            # mkdir, useradd, daemon-reload, a config install and its validation ...
    apt: int = 900             # apt-get update + install (after the lock was got)
    apt_lock: int = 120        # waiting for apt's lock (unattended-upgrades at first boot)
    pip: int = 900             # the virtualenv and pip install
    broker: int = 180          # broker restart and ping, rabbitmqctl
    verify: int = VERIFY_WAIT + 60   # waiting for RUNNING and the worker's ping
    restart: int = 120         # a supervisord (re)start: celery.stopwaitsecs is added (warm shutdown)
    keepalive: int = 10        # SSH keepalive interval; a host silent for 3 of them is given up
    lock: int = 600            # waiting for the project's lock on a host, held by another run (tasks/lock.py)

    def merged(self, values: dict[str, int]) -> Bounds:
        return replace(self, **values)


KEEPALIVE_COUNT = 3
MAX_BOUND = 86400
DEFAULT = Bounds()
KEYS = tuple(f.name for f in fields(Bounds))
LIMITS = {"keepalive": (1, 600), "lock": (0, MAX_BOUND)}    # every other key: 1 s to a day

# Which kind of bound an action of a step gets. A step's quick actions (Action.quick) get
# `quick` whatever the step; so do the configs step's installs.
STEP_KINDS = {
    StepName.SYSTEM: "apt",
    StepName.BROKER: "broker",
    StepName.PYTHON: "pip",
    StepName.CONFIGS: "quick",
    StepName.SUPERVISORD: "restart",
    StepName.VERIFY: "verify",
}


def action_kind(step: str, quick: bool) -> str:
    return "quick" if quick else STEP_KINDS.get(step, "quick")


def action_bound(bounds: Bounds, step: str, quick: bool, stopwaitsecs: int = 0) -> tuple[int, str]:
    """(seconds, the name of the bound) for an action of `step`.

    apt's actions wait for its lock first, so their bound is the lock's plus apt's own; a
    supervisord (re)start waits for the warm shutdown of the worker (stopwaitsecs) and
    beat's (60 s) before it starts them again.
    """
    kind = action_kind(step, quick)
    seconds = getattr(bounds, kind)
    if kind == "apt":
        return bounds.apt_lock + bounds.apt, "bounds.apt_lock + bounds.apt"
    if kind == "restart":
        return (seconds + stopwaitsecs + BEAT_STOPWAITSECS,
                f"bounds.restart + celery.stopwaitsecs + {BEAT_STOPWAITSECS} s for beat")
    return seconds, f"bounds.{kind}"


def local_bound(remote_seconds: int) -> int:
    """How long we wait for a command whose server side is bounded by `remote_seconds`."""
    return remote_seconds + KILL_AFTER + LOCAL_MARGIN


def timed_out(exit_status: int) -> bool:
    """`timeout` exits 124 when it stopped the command (137: it had to KILL it)."""
    return exit_status in (124, 137)
