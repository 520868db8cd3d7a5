"""What the runner (tasks/apply.py) runs on a host: a deploy (tasks/deploy.py deploy_job) or an
undeploy (tasks/undeploy.py undeploy_job), each its probe, its planner and its steps' names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .plan import StepPlan
from .probe import Facts, ProbeSpec


@dataclass(frozen=True)
class Job:
    """What the runner (tasks/apply.py deploy_host) does on one host, the same way for a deploy
    and an undeploy. `name`: the task's word, in the lock and on the host's lines ("the next
    undeploy completes the work"); `spec(with_contents)`: its probe (with the files' contents,
    for a dry run's diffs); `plan(facts, values)`: its plans, from the probe's facts and the
    values the fleet shares (the broker password, a cluster's Erlang cookie); `steps`: what it
    would run after its probe, said when Ctrl-C stops it there."""

    name: str
    spec: Callable[[bool], ProbeSpec]
    plan: Callable[[Facts, dict], list[StepPlan]]
    steps: tuple[str, ...]
