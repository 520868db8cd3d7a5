"""The broker step: Redis (or RabbitMQ) from the OS packages, enabled and running
under systemd, answering ping; and the URL the workers use to reach it."""

from __future__ import annotations

from .inventory import HostSpec, Inventory
from .plan import Action, StepPlan, change, fail, ok
from .probe import Facts

REDIS_UNIT = "redis-server.service"
RABBITMQ_UNIT = "rabbitmq-server.service"

# Wait (bounded) until the server answers: after a start it needs a moment.
REDIS_WAIT = """\
i=0
until [ "$(timeout 3 redis-cli ping 2>/dev/null)" = PONG ]; do
  i=$((i+1))
  if [ "$i" -ge 40 ]; then echo "redis-server does not answer 'redis-cli ping'" >&2; exit 1; fi
  sleep 0.25
done"""


def broker_unit(inventory: Inventory) -> str:
    return REDIS_UNIT if inventory.broker.kind == "redis" else RABBITMQ_UNIT


def manages_broker(inventory: Inventory, host: HostSpec) -> bool:
    return host.has("broker") and not inventory.broker.url


def plan_broker(inventory: Inventory, host: HostSpec, facts: Facts) -> StepPlan:
    if not manages_broker(inventory, host):
        return ok("broker", "not a broker host")
    if inventory.broker.kind != "redis":
        return fail("broker", f"broker.kind {inventory.broker.kind!r} is not supported yet; use redis")
    unit = REDIS_UNIT
    actions = []
    start = ""
    if facts.systemd:
        if not facts.service_enabled(unit):
            start += f"systemctl enable --quiet {unit}\n"
        if not facts.service_active(unit):
            start += f"systemctl start {unit}\n"
    elif facts.redis_ping != "PONG":
        start = "service redis-server start >/dev/null\n"
    if start or facts.redis_ping != "PONG":
        actions.append(Action(f"start and check {unit}", start + REDIS_WAIT))
    if not actions:
        return ok("broker", "redis-server enabled, running and answering ping")
    return change("broker", *actions)


def broker_url(inventory: Inventory, host: HostSpec) -> str:
    """Where this host's programs find the broker."""
    if inventory.broker.url:
        return inventory.broker.url
    # Single host, or this host is the broker: loopback, no password needed.
    return "redis://localhost:6379/0"
