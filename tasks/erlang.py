"""RabbitMQ's Erlang side: where epmd and the Erlang distribution listen (loopback only for a
single node; a cluster node's internal_address too), how the Erlang VMs resolve the nodes'
names (fabcelery's inetrc), and the files that say so, with their template context.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .inventory import HostSpec, Inventory
from .plan import Validator
from .rabbitmq_cluster import cluster_hosts, rabbit_node
from .shell import cmd

# Debian's rabbitmq-env.conf (read by the server and by the CLI
# tools) gets one line that sources fabcelery's own file; epmd is systemd's epmd.socket
# (from the erlang-base package), changed by a drop-in.
# RabbitMQ's Erlang side. Debian's rabbitmq-env.conf (read by the server and by the CLI
# tools) gets one line that sources fabcelery's own file; epmd is systemd's epmd.socket
# (from the erlang-base package), changed by a drop-in.
RABBITMQ_ENV_CONF = "/etc/rabbitmq/rabbitmq-env.conf"

RABBITMQ_ENV = "/etc/rabbitmq/fabcelery-env.conf"

RABBITMQ_ENV_INCLUDE = f"if [ -f {RABBITMQ_ENV} ]; then . {RABBITMQ_ENV}; fi"

RABBITMQ_ENV_INCLUDE_COMMENT = "# Added by fabcelery: where epmd and Erlang distribution listen (server, CLI tools)."

RABBITMQ_INETRC = "/etc/rabbitmq/fabcelery.inetrc"

EPMD_SOCKET = "epmd.socket"

EPMD_DROPIN = "/etc/systemd/system/epmd.socket.d/fabcelery.conf"

EPMD_PORT = 4369



@dataclass(frozen=True)
class ErlangNetwork:
    """Where a RabbitMQ node's Erlang side listens, and how its Erlang VMs find the node.

    `epmd`: the addresses epmd listens on (4369). `distribution`: the one address of the
    node's distribution listener (25672; the kernel's inet_dist_use_interface takes a
    single address), also used by the CLI tools' own listener while they run. `names`:
    host names that RabbitMQ's Erlang VMs (server and CLI tools) resolve to `distribution`,
    before /etc/hosts and DNS: the node is rabbit@HOSTNAME, and the CLI tools reach it
    through epmd and the distribution port at the address that name resolves to, which
    on most servers is not loopback.
    """

    epmd: tuple[str, ...]
    distribution: str
    names: tuple[str, ...]
    # a cluster node's peers: (address, names) of every other node, resolved by the inetrc too
    peers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    node: str = ""                  # a cluster node's name (NODENAME), "" = RabbitMQ's default



def erlang_network(inventory: Inventory, host: HostSpec, hostname: str) -> ErlangNetwork:
    """The one place that decides where epmd and the Erlang distribution listen.

    A single node has no peers: loopback only, also when workers on other hosts use it
    (they need AMQP, 5672, only). A node of a RabbitMQ cluster has epmd on loopback (for the
    CLI tools) and on its internal_address (for its peers), and its distribution port on the
    internal_address (inet_dist_use_interface takes one address; the CLI tools reach it there
    too, since the node's name resolves to it); its inetrc resolves every node's name, its own
    and its peers', to their internal_address.
    """
    name = hostname or host.name
    names = tuple(dict.fromkeys([name.split(".")[0], name]))
    nodes = cluster_hosts(inventory)
    if not any(n.name == host.name for n in nodes):
        return ErlangNetwork(epmd=("127.0.0.1",), distribution="127.0.0.1", names=names)

    def node_names(node: HostSpec) -> tuple[str, ...]:
        return tuple(dict.fromkeys([node.name.split(".")[0], node.name]))

    own = tuple(dict.fromkeys([*node_names(host), *names]))
    peers = tuple((n.internal_address or "", node_names(n)) for n in nodes if n.name != host.name)
    address = host.internal_address or ""
    return ErlangNetwork(epmd=("127.0.0.1", address), distribution=address, names=own, peers=peers,
                         node=rabbit_node(host))



def erlang_ip(address: str) -> str:
    """An IP address as an Erlang tuple: {127,0,0,1}."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        parts = ip.packed
    else:
        parts = [int.from_bytes(ip.packed[i:i + 2], "big") for i in range(0, 16, 2)]
    return "{" + ",".join(str(p) for p in parts) + "}"



def erlang_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'



def socket_address(address: str, port: int) -> str:
    """ADDRESS:PORT as systemd's ListenStream= and RabbitMQ write it ([::1]:4369 for IPv6)."""
    return f"[{address}]:{port}" if ipaddress.ip_address(address).version == 6 else f"{address}:{port}"



@dataclass(frozen=True)
class NodeFile:
    """A file of RabbitMQ's Erlang side (all root:root 0644: no secrets)."""

    target: str
    template: str
    validate: Validator | None = None     # tasks/install.py
    epmd: bool = False              # epmd's socket must be restarted for it to apply



def node_files() -> list[NodeFile]:
    """The files of a RabbitMQ node's Erlang side (tasks/broker.py: rabbitmq_node_files)."""
    return [NodeFile(RABBITMQ_ENV, "rabbitmq-env.conf.j2", validate=Validator.SH),
            NodeFile(RABBITMQ_INETRC, "rabbitmq.inetrc.j2", validate=Validator.ERLANG),
            NodeFile(EPMD_DROPIN, "epmd.socket.conf.j2", epmd=True)]



def node_context(inventory: Inventory, host: HostSpec, hostname: str) -> dict:
    """What the templates of rabbitmq_node_files need."""
    net = erlang_network(inventory, host, hostname)
    return {
        "epmd_address": ",".join(net.epmd),
        "epmd_listen": [socket_address(a, EPMD_PORT) for a in net.epmd],
        "dist_interface": erlang_ip(net.distribution),
        "inetrc": RABBITMQ_INETRC,
        "inetrc_names": ", ".join(erlang_string(n) for n in net.names),
        "inetrc_peers": [(erlang_ip(a), ", ".join(erlang_string(n) for n in names)) for a, names in net.peers],
        "nodename": net.node,
    }



def epmd_restart_script(unit: str) -> str:
    """epmd.socket anew, with its drop-in: its listening sockets change only when it restarts,
    and it can restart only once epmd.service (which holds them) and the node are stopped."""
    loaded = f'[ "$(systemctl show -p LoadState --value {cmd(EPMD_SOCKET)})" = loaded ]'
    return "\n".join([
        cmd("systemctl", "daemon-reload"),
        f"if {loaded}; then",
        "  " + cmd("systemctl", "stop", unit, "epmd.service", EPMD_SOCKET),
        "  " + cmd("systemctl", "start", EPMD_SOCKET),
        "fi",
    ]) + "\n"

