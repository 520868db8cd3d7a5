"""The deploy's follow-ups: what the supervisord step does because an earlier step changes
something (a restart of the programs, the app's check, forgetting the pending record).

Each follow-up declares the changes it reacts to (`Change`: read from the steps' typed plans
and the facts, never from an action's wording) and the step it adds to; plan_deploy
(tasks/deploy.py) runs, in order, every follow-up one of whose changes is there, as pyinfra
runs an operation `_if` an earlier one changed something. The changes are read again before
each follow-up, so that one may react to another (the pending record is forgotten after the
virtualenv's restart too). Pure: facts and plans in, a plan out (tests/unit/test_follow_ups.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from .appcheck import with_app_check
from .plan import Action, Effect, Event, StepName, StepPlan
from .probe import Facts
from .resources_python import PENDING_VENV
from .shell import cmd
from .supervisor import parse_status, supervisorctl
from .target import Target


class Change(StrEnum):
    """What a deploy's steps change, as its follow-ups see it."""

    CONFIGS = "configs"               # the configs step installs or removes files (an earlier deploy's too)
    PIP = "pip"                       # pip runs; its action reports Event.VENV_CHANGED if it changed anything
    VENV_EARLIER = "venv earlier"     # an earlier deploy changed the virtualenv and did not restart the programs
    VENV_RESTART = "venv restart"     # the supervisord step restarts the programs for the virtualenv
    REDIS_RESTART = "redis restart"   # the broker step restarts this host's Redis


@dataclass(frozen=True)
class Planned:
    """What a deploy's step and follow-up read (tasks/deploy.py): the host, its facts, the steps'
    plans so far, what plan_deploy worked out for them (the project user's home, the templates'
    context), where the templates are, and the fleet's shared values (the broker password, a
    RabbitMQ cluster's Erlang cookie)."""

    target: Target
    facts: Facts
    steps: dict[StepName, StepPlan]
    home: str
    context: dict
    templates: list[Path] = field(default_factory=list)
    password: str | None = field(default=None, repr=False)
    cookie: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FollowUp:
    step: StepName                          # the step whose plan it adds to
    reacts_to: frozenset[Change]
    plan: Callable[[Planned], StepPlan]     # that step's plan, with the follow-up's part


def pending_venv(target: Target, facts: Facts) -> bool:
    text = facts.contents.get(target.layout.pending_apply) or ""
    return PENDING_VENV in text.splitlines()


def changes_of(planned: Planned) -> set[Change]:
    steps = planned.steps
    found = {
        Change.CONFIGS: bool(steps[StepName.CONFIGS].configs.changed),
        Change.PIP: steps[StepName.PYTHON].changed,
        Change.VENV_EARLIER: pending_venv(planned.target, planned.facts),
        Change.VENV_RESTART: steps[StepName.SUPERVISORD].venv_restart,
        Change.REDIS_RESTART: steps[StepName.BROKER].restarts_redis,
    }
    return {change for change, there in found.items() if there}


def venv_restart(planned: Planned) -> StepPlan:
    """A graceful restart of the programs that run from the virtualenv when pip changed it: once,
    and only of the programs that the step does not (re)start anyway.

    If pip runs, the restart happens only if pip installed or upgraded something (Action.when);
    if an earlier deploy changed the virtualenv and did not get to restart them (the pending
    record says so), it happens unconditionally.
    """
    target, facts, supervisord = planned.target, planned.facts, planned.steps[StepName.SUPERVISORD]
    configs = planned.steps[StepName.CONFIGS].configs
    layout = target.layout
    earlier = pending_venv(target, facts)
    programs = [p.name for p in target.programs]
    if not programs or not facts.supervisord_running:
        return supervisord      # nothing runs from an old virtualenv: supervisord starts them afresh
    changed = set(configs.changed)
    if layout.supervisord_conf in changed or layout.unit_file in changed or layout.settings_local in changed:
        return supervisord      # the step restarts supervisord, or every program
    if facts.systemd and not facts.service_active(layout.unit_name):
        return supervisord      # supervisord is handed over to systemd: restarted with its programs
    restarted = set(configs.changed_programs)
    states = {p.name: p.state for p in parse_status(facts.supervisor_status)}
    running = [p for p in programs if p not in restarted and states.get(p) in ("RUNNING", "STARTING", "BACKOFF")]
    if not running:
        return supervisord
    why = "the virtualenv changed" if earlier else "pip changed the virtualenv"
    action = Action(f"restart {', '.join(running)} ({why}; warm shutdown)",
                    supervisorctl(layout, "restart", *running),
                    when=None if earlier else Event.VENV_CHANGED,
                    note=f"restarted {', '.join(running)}: {why}")
    return replace(supervisord, actions=(*supervisord.actions, action), venv_restart=True)


# kombu before 5.4 can stop taking tasks after Redis restarted (kombu#2007, fixed in 5.4.0):
# seen on test servers with celery 5.3.6 (Arches' pin) and kombu 5.3.7
KOMBU_RESUMES_AFTER_REDIS_RESTART = (5, 4)


def restart_after_redis(planned: Planned) -> StepPlan:
    """When this host's Redis restarts and the virtualenv's kombu may not resume consuming
    afterwards, a restart of the running programs that the step would not restart anyway."""
    target, facts, supervisord = planned.target, planned.facts, planned.steps[StepName.SUPERVISORD]
    configs = planned.steps[StepName.CONFIGS].configs
    if not facts.supervisord_running:
        return supervisord
    version = facts.dists.get("kombu", "")
    try:
        if tuple(int(part) for part in version.split(".")[:2]) >= KOMBU_RESUMES_AFTER_REDIS_RESTART:
            return supervisord
    except ValueError:
        pass   # not known: restart, to be safe
    if any(a.effect == Effect.SUPERVISORD_STARTS for a in supervisord.actions):
        return supervisord   # every program starts anew
    layout = target.layout
    restarted = set(configs.changed_programs)
    programs = [p.name for p in target.programs]
    if layout.settings_local in configs.changed:
        restarted |= set(programs)
    others = [p for p in programs if p not in restarted]
    if not others:
        return supervisord
    action = Action(f"restart {', '.join(others)} (Redis restarted; kombu {version or '?'} may not resume "
                    "consuming: kombu#2007)", supervisorctl(layout, "restart", *others))
    return replace(supervisord, actions=(*supervisord.actions, action))


def clear_pending(planned: Planned) -> StepPlan:
    """Once supervisord has applied the changes, forget them (run_step's `after_success`)."""
    return replace(planned.steps[StepName.SUPERVISORD],
                   after_success=cmd("rm", "-f", planned.target.layout.pending_apply))


def app_check(planned: Planned) -> StepPlan:
    """The app must see the block's settings before anything starts or restarts (tasks/appcheck.py):
    checked after a change that could matter to it, the configs or the virtualenv."""
    changes = changes_of(planned)
    venv_changes = True if Change.VENV_EARLIER in changes else Event.VENV_CHANGED if Change.PIP in changes else False
    return with_app_check(planned.target, planned.home, planned.context, planned.steps[StepName.SUPERVISORD],
                          Change.CONFIGS in changes, venv_changes)


FOLLOW_UPS = (
    FollowUp(StepName.SUPERVISORD, frozenset({Change.PIP, Change.VENV_EARLIER}), venv_restart),
    FollowUp(StepName.SUPERVISORD, frozenset({Change.REDIS_RESTART}), restart_after_redis),
    FollowUp(StepName.SUPERVISORD, frozenset({Change.CONFIGS, Change.PIP, Change.VENV_RESTART}), clear_pending),
    FollowUp(StepName.SUPERVISORD, frozenset({Change.CONFIGS, Change.PIP, Change.VENV_EARLIER}), app_check),
)


def follow_up(planned: Planned) -> dict[StepName, StepPlan]:
    """The steps' plans with every follow-up whose changes are there, in order."""
    steps = dict(planned.steps)
    for follow in FOLLOW_UPS:
        now = replace(planned, steps=steps)
        if follow.reacts_to & changes_of(now):
            steps[follow.step] = follow.plan(now)
    return steps
