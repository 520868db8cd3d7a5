"""A deploy proves the app reads its settings: before any program starts or restarts, the
project's Celery app is loaded as the worker loads it and its effective configuration is
compared with what the fabcelery block of settings_local.py sets
(tasks/scripts/app_settings.py, run as the project user by the virtualenv's Python).

An app that reads only CELERY_BROKER_URL misses the Redis key prefix (Redis then refuses it
with NOPERM) or the quorum queues of a cluster; the deploy stops the host before anything
restarts, naming each setting and the fix. Pure: the decision and the command; the deploy
runs it as the supervisord step's first action, and only when something changed that could
matter (the configs, the virtualenv).
"""

from __future__ import annotations

import json
from dataclasses import replace

from .plan import Action, Event, StepPlan
from .scripts import app_settings, text
from .shell import cmd
from .target import Target

SCRIPT = "app_settings.py"
# the PATH systemd gives supervisord, and so the programs
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def expected_settings(target: Target, context: dict) -> dict:
    """What the block sets (templates/settings_local.block.j2, from the same context), in the
    script's shape: the broker URL's parts without the password."""
    return {
        "settings_file": target.layout.settings_local,
        "broker": app_settings.broker_urls(context["broker_url"]),
        "keyprefix": context.get("redis_keyprefix") or "",
        "quorum": bool(context.get("quorum_queues")),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Redis, when the block sets it (tasks/timeouts.py)
        **({"visibility_timeout": context["visibility_timeout"]} if context.get("visibility_timeout") else {}),
    }


def check_command(target: Target, home: str, expected: dict) -> str:
    """The check, as the project user, with the worker's environment (HOME, USER, the first
    pool's own variables), by the virtualenv's Python: root never runs the project's code."""
    project = target.inventory.project
    layout = target.layout
    pools = [p.pool for p in target.programs if p.pool is not None]
    environment = [f"{key}={value}" for key, value in (pools[0].environment if pools else ())]
    return cmd("runuser", "-u", project.user, "--", "env", "-i", f"HOME={home}", f"USER={project.user}",
               f"PATH={PATH}", "PYTHONUNBUFFERED=1", *environment,
               f"{layout.venv_bin}/python", "-c", text(SCRIPT), target.inventory.celery.app, project.path,
               f"{project.name}.settings", json.dumps(expected, sort_keys=True))


def with_app_check(target: Target, home: str, context: dict, supervisord: StepPlan,
                   configs_changed: bool, venv_changes: bool | Event) -> StepPlan:
    """The supervisord step, checking the app first when it starts or restarts anything after a
    change that could matter: the configs (settings_local.py, a program file), or the
    virtualenv. venv_changes: False (the virtualenv does not change), True (it did: an earlier
    deploy's record), or the event that says pip changed it (known only once pip has run)."""
    if not any(not a.quick for a in supervisord.actions) or not target.programs:
        return supervisord     # nothing starts or restarts (a daemon-reload at most)
    if not configs_changed and venv_changes is False:
        return supervisord     # a program merely stopped, started again: nothing of the app changed
    when = None if configs_changed or isinstance(venv_changes, bool) else venv_changes
    action = Action(f"check that {target.inventory.celery.app} sees the settings of settings_local.py "
                    f"(loaded as {target.inventory.project.user})",
                    check_command(target, home, expected_settings(target, context)), when=when)
    return replace(supervisord, checks=(*supervisord.checks, action))
