"""What a step decided: the changes to make, or why there is nothing to do.

Steps are pure functions from (inventory, facts) to a StepPlan; the task layer runs
the plans over SSH. Keeping the two apart lets the deciding be unit-tested and makes
--dry-run a matter of printing plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class StepName(StrEnum):
    """A deploy's or an undeploy's steps (and the probe before them), as their lines name them."""

    PROBE = "probe"
    PREFLIGHT = "preflight"
    SYSTEM = "system"
    BROKER = "broker"
    PYTHON = "python"
    CONFIGS = "configs"
    SUPERVISORD = "supervisord"
    VERIFY = "verify"
    PURGE = "purge"


class Validator(StrEnum):
    """How a file is checked on the host before it is installed (tasks/install.py)."""

    SUPERVISORD = "main"          # supervisord.conf, by supervisor's own parser
    PROGRAMS = "programs"         # a program file, by supervisor's own parser
    REDIS = "redis"               # a throw-away redis-server loads it
    SH = "sh"                     # sh -n
    ERLANG = "erlang"             # Erlang's file:consult (an inetrc)
    LOGROTATE = "logrotate"       # logrotate -d


class Effect(StrEnum):
    """What an action does, for the follow-ups that react to it (tasks/follow_ups.py): typed, so
    that no behaviour depends on the wording of an action's summary."""

    SUPERVISORD_STARTS = "supervisord starts"   # supervisord starts or restarts: every program starts anew


class Event(StrEnum):
    """What an action reports while it runs (a line `EVENT NAME` of its output), for later
    actions of the same deploy that run only if it came (Action.when)."""

    VENV_CHANGED = "venv_changed"               # pip installed, upgraded or removed something


EVENT = "fabcelery-event: "


def events_in(output: str) -> set[Event]:
    """The events that an action's output reports (its lines `EVENT NAME`)."""
    names = {line[len(EVENT):].strip() for line in output.splitlines() if line.startswith(EVENT)}
    return {event for event in Event if event.value in names}


@dataclass(frozen=True)
class Upload:
    """A file to put in place atomically: temporary name in the target directory, then rename."""

    target: str
    content: str
    owner: str = "root"
    group: str = "root"
    mode: str = "0644"
    validate: Validator | None = None   # checked before it is installed (tasks/install.py)
    old_content: str | None = None  # for --dry-run diffs, when known
    secret: bool = False            # holds a password: mask it in diffs
    diff: bool = True               # False: never show the content, not even masked (a password file)
    nofollow: bool = False          # the target lies where the project user can write (tasks/scripts/nofollow.py)


@dataclass(frozen=True)
class Action:
    summary: str                     # one line for the progress output
    script: str = ""                 # run as root in one `sh -c`
    uploads: tuple[Upload, ...] = ()
    # a quick script (mkdir, useradd, ...): consecutive quick actions run as one remote
    # command; a slow one (apt, pip, a restart) runs alone, so its progress line is current
    quick: bool = False
    # run only if an earlier action of this deploy reported this event (VENV_CHANGED: pip
    # installed or upgraded something); decided now, known only once pip has run
    when: Event | None = None
    effect: Effect | None = None     # what it does, for the follow-ups that react to it
    note: str = ""                   # once it ran: why, for the recap
    # sh run by the install script of `uploads` after validation, before the renames (the
    # broker step records there that Redis must be restarted: broker.redis_restart_file)
    before_rename: str = ""


@dataclass(frozen=True)
class ConfigChanges:
    """What the configs step changes, for the steps after it (supervisord: what to apply)."""

    changed: tuple[str, ...] = ()            # files installed or removed
    changed_programs: tuple[str, ...] = ()   # supervisor programs whose file changed
    added_programs: tuple[str, ...] = ()     # ... of which new ones
    removed: tuple[str, ...] = ()            # program files removed
    removed_programs: tuple[str, ...] = ()
    unit_restart: bool = True                # a changed unit needs supervisord restarted (not daemon-reload only)
    main_restart: bool = True                # a changed supervisord.conf needs it restarted (not reread only)
    moved_out: tuple[str, ...] = ()          # program files an earlier fabcelery kept in conf.d, removed
    # settings_local.py changed only in the lines the workers alone run (tasks/shutdown.py): beat keeps running
    settings_workers_only: bool = False


@dataclass(frozen=True)
class StepPlan:
    """A step's decision, and what later steps and the runner need to know of it (typed: each
    field says which step sets it and who reads it)."""

    name: StepName
    actions: tuple[Action, ...] = ()
    noop: str = ""                   # why there is nothing to do
    error: str = ""                  # the step cannot go on: nothing is run, the message says what to fix
    configs: ConfigChanges = field(default_factory=ConfigChanges)   # the configs step's changes
    restarts_redis: bool = False     # broker: this deploy restarts the host's Redis (follow_ups.restart_after_redis)
    venv_restart: bool = False       # supervisord: restarts programs because the virtualenv changed
    # sh run by the install script of an action's uploads between validation and renames
    # (configs: the record of what is not applied yet, configs.with_pending)
    record_pending: str = ""
    after_success: str = ""          # sh run once every action succeeded (follow_ups.clear_pending)
    # run before the step's actions, changing nothing: what must hold before they may run (the
    # supervisord step: the app sees its settings, tasks/appcheck.py); one that fails stops the step
    checks: tuple[Action, ...] = ()
    noops: tuple[str, ...] = ()      # each resource's no-op reason (resources.plan_resources)
    # its actions look and change nothing (verify): run, they report ok, and the recap's
    # `changed` counts only what changed
    looks_only: bool = False

    @property
    def changed(self) -> bool:
        """Something to run (a look, for a `looks_only` step)."""
        return bool(self.actions)

    @property
    def counts_as_change(self) -> bool:
        return self.changed and not self.looks_only


def ok(name: StepName, why: str, **fields) -> StepPlan:
    return StepPlan(name=name, noop=why, **fields)


def change(name: StepName, *actions: Action, **fields) -> StepPlan:
    return StepPlan(name=name, actions=tuple(actions), **fields)


def fail(name: StepName, message: str) -> StepPlan:
    return StepPlan(name=name, error=message)

