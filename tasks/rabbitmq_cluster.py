"""A RabbitMQ cluster: three or five broker hosts, the first the seed that forms it, the
others joining it (formation, join_script), with one Erlang cookie shared like the password.
Which hosts are its nodes, their Erlang names, what a node knows of its membership (a file
the probe reads), and the one version the nodes must share. Celery's queues on a cluster are
quorum queues (tasks/celery_policy.py); its Erlang networking is tasks/erlang.py.
"""

from __future__ import annotations

import re

from .facts_base import QueueSurvey
from .inventory import HostSpec, Inventory
from .layout import Layout
from .probe import Facts
from .shell import cmd

# A RabbitMQ cluster: the cookie its nodes (and their CLI tools, which Debian runs as the
# rabbitmq user) authenticate each other with, and where a node keeps its membership.
RABBITMQ_COOKIE = "/var/lib/rabbitmq/.erlang.cookie"

RABBITMQ_DATA = "/var/lib/rabbitmq/mnesia"

CLUSTER_TIMEOUT = 120           # a join, a node's start, a wait for quorum: bounded



def cookie_file(inventory: Inventory) -> str:
    """fabcelery's copy of a cluster's Erlang cookie (0600 root), which the fleet reads back."""
    return f"{Layout(inventory.project).fabcelery_dir}/erlang-cookie"



def cluster_hosts(inventory: Inventory) -> list[HostSpec]:
    """The nodes of a RabbitMQ cluster, in inventory order (the first is the seed); [] when the
    fleet has one broker host (or Redis, or an external broker)."""
    # only RabbitMQ may have several broker hosts: the inventory refuses them for Redis, and with
    # broker.url (tasks/inventory_hosts.py, _cluster_problems)
    brokers = inventory.broker_hosts()
    if inventory.broker.url or len(brokers) < 2:
        return []
    return brokers



def in_cluster(inventory: Inventory, host: HostSpec) -> bool:
    return any(h.name == host.name for h in cluster_hosts(inventory))



def cluster_seed(inventory: Inventory) -> HostSpec | None:
    nodes = cluster_hosts(inventory)
    return nodes[0] if nodes else None



def rabbit_node(host: HostSpec) -> str:
    """A cluster node's Erlang name: rabbit@ and the inventory name up to its first dot.

    From the inventory, not from the host's own `hostname`: every node must know every other
    node's name before any of them is probed, and the names resolve through fabcelery's
    inetrc (not DNS or /etc/hosts), so they need not be the hosts' system names."""
    return "rabbit@" + host.name.split(".")[0]



def node_data_dir(host: HostSpec) -> str:
    return f"{RABBITMQ_DATA}/{rabbit_node(host)}"



def cluster_nodes_file(host: HostSpec) -> str:
    """What the node knows of its cluster: RabbitMQ rewrites it at every membership change
    ({[AllNodes],[DiscNodes]}.), a file read instead of an Erlang VM started by the probe."""
    return f"{node_data_dir(host)}/cluster_nodes.config"



NODE_IN_TERMS = re.compile(r"'?(rabbit@[A-Za-z0-9_.-]+)'?")



def known_members(facts: Facts, host: HostSpec) -> list[str]:
    """The nodes this node counts as its cluster, from its cluster_nodes.config ([] if none)."""
    text = facts.contents.get(cluster_nodes_file(host)) or ""
    first = text.split("]", 1)[0]
    return NODE_IN_TERMS.findall(first)



def formation(inventory: Inventory, host: HostSpec, facts: Facts) -> str:
    """'seed' (forms the cluster), 'formed' (already a member of the seed's cluster), or
    'join' (not yet, or no longer: a node that lost its data starts on its own)."""
    seed = cluster_seed(inventory)
    if seed is None or seed.name == host.name:
        return "seed"
    return "formed" if rabbit_node(seed) in known_members(facts, host) else "join"



def major_minor(version: str | None) -> str | None:
    """'4.0.5-6+deb13u2' -> '4.0'."""
    match = re.match(r"^(?:\d+:)?(\d+)\.(\d+)", version or "")
    return f"{match[1]}.{match[2]}" if match else None



def version_problems(inventory: Inventory, facts_by_host: dict[str, Facts]) -> list[str]:
    """RabbitMQ nodes of different major.minor cannot form one cluster (Debian 12 ships 3.10,
    Debian 13 4.0): refused before anything changes. A node without RabbitMQ yet gets the
    package of its release, so its release must be one that the other nodes run."""
    installed = {name: major_minor(f.versions.get("rabbitmq-server")) for name, f in facts_by_host.items()
                 if f.installed("rabbitmq-server")}
    releases = {name: f"{f.os.get('id', '?')} {f.os.get('version_id', '?')}" for name, f in facts_by_host.items()}
    described = [f"{name} RabbitMQ {installed[name]}" if name in installed
                 else f"{name} none yet ({facts_by_host[name].os.get('pretty_name') or releases[name]})"
                 for name in facts_by_host]
    fix = ("the nodes of a cluster must run the same RabbitMQ major.minor version: put them on the same "
           "Debian/Ubuntu release (Debian 12 ships RabbitMQ 3.10, Debian 13 ships 4.0)")
    if len(set(installed.values())) > 1:
        return [f"the RabbitMQ cluster's nodes run different versions ({'; '.join(described)}): {fix}"]
    fresh = [name for name in facts_by_host if name not in installed]
    known = {releases[name] for name in installed} or {releases[name] for name in fresh[:1]}
    if any(releases[name] not in known for name in fresh):
        return [f"the RabbitMQ cluster's nodes would run different versions ({'; '.join(described)}): {fix}"]
    return []



def queue_survey(inventory: Inventory, host: HostSpec, vhost: str) -> QueueSurvey:
    """What the probe lists of a node's queues, while it is not yet in the whole cluster."""
    others = tuple(rabbit_node(h) for h in cluster_hosts(inventory) if h.name != host.name)
    return QueueSurvey(vhost, cluster_nodes_file(host), others)


def _listed(queues) -> str:
    return ", ".join(f"{q.name}: {q.messages} message{'' if q.messages == 1 else 's'}" for q in queues)


def queue_problems(inventory: Inventory, facts_by_host: dict[str, Facts], vhost: str) -> list[str]:
    """What a node's queues stand against forming the cluster (facts: RabbitmqQueues, listed only
    on a node not yet in the whole cluster). The seed keeps its data: a durable classic queue
    there is one that Celery, which declares a cluster's queues as quorum queues, would be
    refused (PRECONDITION_FAILED: RabbitMQ does not change a queue's type), its workers and
    producers then failing. A joining node is reset by join_cluster: the messages in its
    queues would be lost without a word. Refused before anything changes, with the way out."""
    problems = []
    nodes = cluster_hosts(inventory)
    for host in nodes:
        facts = facts_by_host.get(host.name)
        queues = facts.rabbitmq_queues if facts is not None else None
        if not queues:
            continue
        if host.name == nodes[0].name:
            classic = [q for q in queues if q.type == "classic" and q.durable and not q.transient]
            if classic:
                deletes = "; ".join(cmd("rabbitmqctl", "delete_queue", "-p", vhost, q.name) for q in classic)
                problems.append(
                    f"{host.name} holds classic queues in the vhost {vhost} ({_listed(classic)}), and a cluster's "
                    "Celery queues are quorum queues: RabbitMQ does not change a queue's type, so the workers "
                    "would be refused them. Empty and delete them first: stop what sends tasks, let the workers "
                    f"drain the queues, run `fab stop-celery`, then on {host.name} `{deletes}`, and deploy "
                    "again (then restart what sends tasks, which reads the new settings)")
        elif formation(inventory, host, facts) == "join":
            held = [q for q in queues if q.messages > 0]
            if held:
                problems.append(
                    f"{host.name} is to join the cluster of {nodes[0].name}, and joining resets a node: the "
                    f"messages in its queues of the vhost {vhost} ({_listed(held)}) would be lost. Let its "
                    "workers drain them first, and deploy again")
    return problems


def join_script(host: HostSpec, seed: HostSpec) -> str:
    """This node into the seed's cluster, bounded: stop_app, join_cluster, start_app.

    A node that lost its data (reinstalled) is still a member in the seed's eyes, and the
    seed refuses it as inconsistent: it is forgotten there first (from here, through the
    seed's node, which this node's CLI reaches with the cluster's cookie), then joins. Once
    a member, it gets a replica of every quorum queue that lacks one on it (`grow`). start_app
    runs whatever happened before it, so the node is never left stopped."""
    me, other = rabbit_node(host), rabbit_node(seed)
    t = str(CLUSTER_TIMEOUT)
    return "\n".join([
        "set -e",
        # the seed may still be starting (its own deploy restarted it): wait for it, bounded
        f"i=0; until timeout 15 {cmd('rabbitmqctl', '-q', '-n', other, 'await_startup')} >/dev/null 2>&1; do",
        f"  i=$((i+1)); if [ $i -ge 8 ]; then echo {cmd(f'the seed {other} does not answer: not joined')} >&2;"
        " exit 1; fi; sleep 2",
        "done",
        cmd("timeout", t, "rabbitmqctl", "-q", "stop_app") + " >/dev/null",
        "rc=0",
        f"if ! out=$({cmd('timeout', t, 'rabbitmqctl', '-q', 'join_cluster', other)} 2>&1); then",
        "  case \"$out\" in",
        "    *inconsistent_cluster*)",
        f"      {cmd('timeout', t, 'rabbitmqctl', '-q', '-n', other, 'forget_cluster_node', me)} >/dev/null 2>&1 &&",
        f"      out=$({cmd('timeout', t, 'rabbitmqctl', '-q', 'join_cluster', other)} 2>&1) || rc=1 ;;",
        "    *) rc=1 ;;",
        "  esac",
        "fi",
        cmd("timeout", t, "rabbitmqctl", "-q", "start_app") + " >/dev/null",
        cmd("timeout", t, "rabbitmqctl", "-q", "await_startup") + " >/dev/null",
        'if [ $rc -ne 0 ]; then printf \'%s\\n\' "$out" >&2; exit 1; fi',
        cmd("timeout", t, "rabbitmq-queues", "-q", "grow", me, "all") + " >/dev/null",
    ])

