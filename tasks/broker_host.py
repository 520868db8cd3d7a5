"""Where the broker is, whether fabcelery manages it, and where its password is kept: what
every broker kind shares (tasks/redis_broker.py, tasks/rabbitmq_broker.py).

The password is kept on the broker host (/var/lib/fabcelery/NAME/broker-password, 0600 root)
and travels only in files: rabbitmqctl reads it on stdin, redis-cli from REDISCLI_AUTH, never
from a command line.
"""

from __future__ import annotations

import secrets
import string

from .inventory import HostSpec, Inventory
from .layout import Layout
from .rabbitmq_cluster import in_cluster
from .shell import cmd


def password_file(inventory: Inventory) -> str:
    return f"{Layout(inventory.project).fabcelery_dir}/broker-password"



def manages_broker(inventory: Inventory, host: HostSpec) -> bool:
    return host.has("broker") and not inventory.broker.url



def broker_for(inventory: Inventory, host: HostSpec) -> HostSpec | None:
    """The host whose broker this host's programs use (None: an external broker.url)."""
    if inventory.broker.url:
        return None
    if host.has("broker"):
        return host
    return inventory.broker_host()



def remote_access(inventory: Inventory, broker: HostSpec) -> bool:
    """Do workers on other hosts use this broker? (A cluster node's always may.)"""
    if in_cluster(inventory, broker):
        return True
    return any(h.has("worker") and h.name != broker.name and not h.has("broker") for h in inventory.hosts.values()) \
        and broker.name in inventory.hosts



def needs_password(inventory: Inventory, broker: HostSpec | None) -> bool:
    """A broker fabcelery manages always has the project's own account, with a password
    (Redis: an ACL user, also on a single host). An external broker.url: only if given."""
    return broker is not None



def password_script(inventory: Inventory) -> str:
    """Read the password kept on the broker host (printed to our captured, never-shown stdout)."""
    path = cmd(password_file(inventory))
    return f"if [ -s {path} ]; then cat {path}; fi"



def new_password() -> str:
    """32 letters and digits: strong, and nothing that needs quoting anywhere."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))

