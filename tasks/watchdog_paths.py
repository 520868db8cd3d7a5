"""Where the watchdog's files live on a host, and whether a host has one: what `fab status`
needs of it, apart from tasks/watchdog.py's planning (which renders templates: status does
not pay for importing Jinja2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .layout import Layout
    from .target import Target


class Paths:
    """Where the watchdog's files live on a host."""

    def __init__(self, layout: Layout):
        name = layout.name
        self.script = f"{layout.fabcelery_dir}/watchdog.py"
        self.rule = f"{layout.fabcelery_dir}/stall_rule.py"
        self.config = f"{layout.fabcelery_dir}/watchdog.json"
        self.service_name = f"{name}-watchdog.service"
        self.timer_name = f"{name}-watchdog.timer"
        self.service = f"/etc/systemd/system/{self.service_name}"
        self.timer = f"/etc/systemd/system/{self.timer_name}"
        # the project user's: the histories and the last restart of each program (fab status reads it)
        self.state = f"{layout.state_dir}/watchdog-state.json"
        self.identifier = f"{name}-watchdog"


def wanted(target: Target) -> bool:
    return target.inventory.celery.watchdog is not None and bool(target.workers)
