"""What fabcelery owns on a host, as typed resources, and the one differ that turns
(resources, facts) into actions.

A resource is one thing on a server (packages, a user, a directory, a file, a line in
a file, the managed block of settings_local.py, a systemd unit, a virtualenv and what pip
installs into it, a broker account), and
it is wanted present or absent. Each kind says which facts it needs (`needs`: a part of
the probe's spec; the probe asks for the union, in one round trip) and what it takes to
get from the facts to the wanted state (`diff`: the actions, or why there is nothing to
do). `plan_resources` runs the differ over a step's resources and makes the step's plan.

This module is the protocol and the differ; the kinds are beside it: packages, users and
groups in resources_os.py, directories and files in resources_files.py, systemd units and
timers in resources_systemd.py, a virtualenv and pip in resources_python.py, a line and the
managed block in file_edits.py, the broker's kept secrets, config files, service and a
cluster node's peers in resources_broker.py.

The system step declares its packages, user, group, directories and log files as
resources; the python step its virtualenv and pip install; the configs step its
rendered files and settings_local.py's block, installed together, and the files it removes;
the broker step everything it does (tasks/broker.py broker_resources); the supervisord step
its unit, supervisord running and its programs applied (tasks/supervisor.py). `fab undeploy`
(tasks/undeploy.py) declares everything a deploy put on a host, absent.
Nothing here touches a host: deciding is pure, and tested as tables
(tests/unit/test_resources.py).
"""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .plan import Action, StepName, StepPlan, change, fail, ok
from .probe import Facts, ProbeSpec, union_of


class Refused(Exception):
    """The host holds something in the way that fabcelery did not make (a link where a
    directory belongs): the step stops before it changes anything, and says what to fix."""


@dataclass(frozen=True)
class Diff:
    actions: tuple[Action, ...] = ()
    noop: str = ""        # why nothing is to be done, when `actions` is empty


class Resource(Protocol):
    present: bool

    def needs(self) -> ProbeSpec: ...

    def diff(self, facts: Facts) -> Diff: ...


def nothing(why: str) -> Diff:
    return Diff(noop=why)


def doing(*actions: Action) -> Diff:
    return Diff(actions=tuple(actions))


def wrong_kind(path: str, kind: str, found: str) -> Refused:
    what = "a symbolic link" if found == "link" else f"not a {kind}"
    return Refused(f"{path} is {what}: fabcelery never follows a link or replaces what it did not make; "
                   f"remove it, and the next deploy creates the {kind}")



@dataclass(frozen=True)
class Custom:
    """A resource whose change is a script decided elsewhere (a broker account: see
    broker.account_resources), so that it takes part in the same differ and probe."""

    what: str
    spec: ProbeSpec = field(default_factory=ProbeSpec)
    decide: object = None         # (facts) -> Diff
    present: bool = True

    def needs(self) -> ProbeSpec:
        return self.spec

    def diff(self, facts: Facts) -> Diff:
        return self.decide(facts)


# --- the differ -------------------------------------------------------------------------------


def needs_of(resources) -> ProbeSpec:
    """The probe's spec for these resources: the union of what each needs."""
    return union_of(resource.needs() for resource in resources)



def plan_resources(step: StepName, resources, facts: Facts, noop: str) -> StepPlan:
    """The step's plan: every resource's actions, in order; `noop` when none has any.
    The no-op reason of each resource is kept in the plan (`noops`), as pyinfra keeps why an
    operation did nothing."""
    actions: list[Action] = []
    noops: list[str] = []
    for resource in resources:
        try:
            diff = resource.diff(facts)
        except Refused as exc:
            return fail(step, str(exc))
        actions += diff.actions
        if not diff.actions:
            noops.append(diff.noop)
    if not actions:
        return ok(step, noop, noops=tuple(noops))
    return change(step, *actions, noops=tuple(noops))
