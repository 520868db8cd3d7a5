"""The watchdog (celery.watchdog, opt in): on each worker host a systemd timer runs a oneshot
service as the project user, which runs tasks/scripts/watchdog.py: the stall rule of `fab
status` (tasks/scripts/stall_rule.py) applied to the host's pools, and a warm restart of a
stalled one through the project's supervisord.

Declared as resources (tasks/resources.py), planned with the configs step: the two scripts and
the check's config (no secret: the broker URL is read on the host from settings_local.py's
block) in fabcelery's directory, the service and the timer in /etc/systemd/system, the timer
enabled and started. With the key left out (or on a host without pools), the same files are
declared absent, so turning the key off removes them on the next deploy; `fab undeploy`
removes them too (tasks/undeploy.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .configs import BEGIN_MARKER, END_MARKER
from .plan import StepName, StepPlan, fail
from .probe import Facts, ProbeSpec
from .rendering import TEMPLATES, TemplateError, render
from .resources import needs_of, plan_resources
from .resources_files import File
from .resources_systemd import Timer, Unit
from .scripts import text
from .target import Target
from .watchdog_paths import Paths, wanted


def check_config(target: Target) -> dict:
    """What the check on this host needs to know (tasks/scripts/watchdog.py); no secret."""
    layout = target.layout
    pools = [p.pool for p in target.workers]
    queues = list(dict.fromkeys(q for p in pools for q in p.queues))
    config = {
        "supervisorctl": f"{layout.venv_bin}/supervisorctl",
        "conf": layout.supervisord_conf,
        "settings": layout.settings_local,
        "begin": BEGIN_MARKER,
        "end": END_MARKER,
        "kind": target.inventory.broker.kind,
        "pools": {p.name: list(p.queues) for p in pools},
        # every pool of the fleet: a message any of them holds is work, not a stall
        "all_pools": ";".join(f"{p.name}={','.join(p.queues)}" for p in target.inventory.celery.pools.values()),
        "queues": queues,
        "logs": {p.name: layout.pool_log(p.name) for p in pools},
        "stalled_after": target.inventory.celery.watchdog.stalled_after,
        "state": Paths(target.layout).state,
    }
    config.update(target.broker.watchdog_keys(queues))
    return config


def watchdog_resources(target: Target, context: dict | None,
                       templates: Path | list[Path] = TEMPLATES) -> list:
    """The watchdog's resources on this host: present with the key on (rendered from the
    deploy's template context), else absent."""
    paths = Paths(target.layout)
    if not wanted(target) or context is None:
        # the service's file first: the timer's removal reloads systemd
        return [File(paths.service, present=False), Unit(paths.timer_name, paths.timer),
                *(File(path, present=False) for path in (paths.config, paths.script, paths.rule))]
    watchdog = target.inventory.celery.watchdog
    ctx = {**context, "watchdog": {"script": paths.script, "config": paths.config, "identifier": paths.identifier,
                                   "interval": watchdog.interval}}
    units = (File(paths.service, content=render("watchdog.service.j2", ctx, templates)),
             File(paths.timer, content=render("watchdog.timer.j2", ctx, templates)))
    files = (File(paths.rule, content=text("stall_rule.py")), File(paths.script, content=text("watchdog.py")),
             File(paths.config, content=json.dumps(check_config(target), indent=2, sort_keys=True) + "\n"))
    return [*files, *units, Timer(paths.timer_name, files=(*files, *units), why="celery.watchdog")]


def watchdog_needs(target: Target, with_contents: bool = False) -> ProbeSpec:
    """The probe's part: the same whether the watchdog is on or off (off: what to remove)."""
    paths = Paths(target.layout)
    every = [paths.script, paths.rule, paths.config, paths.service, paths.timer]
    spec = ProbeSpec(paths=tuple(every), checksums=tuple(every), services=(paths.timer_name,),
                     contents=tuple(every) if with_contents else ())
    return spec.union(needs_of(watchdog_resources(target, None)))


def plan_watchdog(target: Target, facts: Facts, context: dict | None,
                  templates: Path | list[Path] = TEMPLATES) -> StepPlan:
    try:
        resources = watchdog_resources(target, context, templates)
    except TemplateError as exc:
        return fail(StepName.CONFIGS, str(exc))
    return plan_resources(StepName.CONFIGS, resources, facts, "the watchdog as it should be")


def with_watchdog(configs: StepPlan, watchdog: StepPlan) -> StepPlan:
    """The configs step with the watchdog's actions after its own (its files, the timer)."""
    if configs.error:
        return configs
    if watchdog.error:
        return fail(StepName.CONFIGS, watchdog.error)
    if not watchdog.actions:
        return configs
    return replace(configs, actions=configs.actions + watchdog.actions, noop="")
