"""fabcelery's public interface, for tools beside it (bench/, a user's own scripts): the
inventory, the probe, and what a host (its Target: Target.of(inventory, host)) should have
according to the inventory and its facts, without running anything. These names stay as they are; the rest of tasks/ may
change from one version to the next.
"""

from __future__ import annotations

from .broker import broker_url, fragment_context
from .broker_host import broker_for, manages_broker, needs_password, password_file
from .configs import config_files, template_context, unwanted_files
from .deploy import probe_spec
from .inventory import HostSpec, Inventory
from .inventory_load import load_inventory
from .layout import Layout
from .probe import Facts, parse_probe, probe_script
from .pyenv import plan_python, requirements
from .redis_broker import REDIS_CONF, redis_include, redis_include_comment
from .rendering import TEMPLATES
from .supervisor import supervisorctl, verify_script
from .system import managed_paths, required_packages, runs_celery, user_home
from .target import Target
from .undeploy import plan_undeploy, undeploy_spec

__all__ = [
    "REDIS_CONF", "TEMPLATES", "Facts", "HostSpec", "Inventory", "Layout", "Target", "broker_for", "broker_url",
    "config_files", "fragment_context", "load_inventory", "managed_paths", "manages_broker", "needs_password",
    "parse_probe", "password_file", "plan_python", "plan_undeploy", "probe_script", "probe_spec", "redis_include",
    "redis_include_comment", "required_packages", "requirements", "runs_celery", "supervisorctl", "template_context",
    "undeploy_spec", "unwanted_files", "user_home", "verify_script",
]
