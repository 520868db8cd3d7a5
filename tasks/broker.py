"""The broker step: Redis or RabbitMQ from the OS packages, enabled and running under
systemd, bound and authenticated as the fleet needs, answering ping; and the URL the
workers use to reach it.

Every project authenticates with an account of its own, also on a single host. Redis:
an ACL user named after the project, which may touch only keys and channels that begin
with `NAME:` and run only the commands kombu and celery's result backend use; its
settings in a fragment of its own (/etc/redis/fabcelery-NAME.conf), included by a line
of its own in redis.conf, so two projects on one Redis never rewrite each other's file;
Redis's passwordless `default` user is turned off. Redis listens on loopback unless
workers on other hosts need it; then also on the broker host's internal address.
RabbitMQ gets a vhost and a user of its own, and no `guest`; its Erlang side (epmd, the
distribution port) listens on loopback only (erlang_network). Three or five RabbitMQ
broker hosts form one cluster (cluster_hosts): the first seeds it, the others join it
(formation, join_script), with one Erlang cookie shared like the password, and Celery's
queues become quorum queues. The password is kept on the broker host
(/var/lib/fabcelery/NAME/broker-password, 0600 root) and travels only in files:
rabbitmqctl reads it on stdin, redis-cli from REDISCLI_AUTH, never from a command line;
the Redis fragment holds only its SHA-256 hash.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import string
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from .checksum import sha256
from .inventory import HostSpec, Inventory
from .layout import Layout
from .plan import Action, StepName, StepPlan, Upload, Validator, change, fail, ok
from .probe import Facts, ProbeSpec
from .resources import Line
from .shell import cmd

REDIS_UNIT = "redis-server.service"
RABBITMQ_UNIT = "rabbitmq-server.service"
REDIS_CONF = "/etc/redis/redis.conf"
# Redis refuses a second declaration of a user anywhere in its config files ("Duplicate
# user found", 7.0 and 8.0 alike), so `default` is turned off by one line of redis.conf
# that every project's deploy checks for, not in each project's fragment.
REDIS_DEFAULT_OFF = "user default off"
REDIS_DEFAULT_OFF_COMMENT = ("# Added by fabcelery: no passwordless access; each project has an ACL user of its own "
                             "(/etc/redis/fabcelery-*.conf).")
# What fabcelery before per-project fragments left on a server: one fragment for every
# project, and its include line (with a comment line above it); removed by a deploy.
OLD_REDIS_FRAGMENT = "/etc/redis/fabcelery.conf"
OLD_REDIS_INCLUDE = f"include {OLD_REDIS_FRAGMENT}"
OLD_REDIS_INCLUDE_COMMENT = "# Added by fabcelery: the settings in this file win over the ones above."
RABBITMQ_FRAGMENT = "/etc/rabbitmq/conf.d/50-fabcelery.conf"
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
# A RabbitMQ cluster: the cookie its nodes (and their CLI tools, which Debian runs as the
# rabbitmq user) authenticate each other with, and where a node keeps its membership.
RABBITMQ_COOKIE = "/var/lib/rabbitmq/.erlang.cookie"
RABBITMQ_DATA = "/var/lib/rabbitmq/mnesia"
QUORUM_CELERY = (5, 5)          # Celery declares quorum queues from 5.5 on (task_default_queue_type)
# ... and the queues it creates on demand (a pool's -Q) from 5.6 on (task_create_missing_queue_type)
QUORUM_MISSING_CELERY = (5, 6)
CLUSTER_TIMEOUT = 120           # a join, a node's start, a wait for quorum: bounded
# The commands a project's Redis account may run: what kombu's Redis transport and celery's
# Redis result backend use (lists, sets, sorted sets, hashes, strings, key expiry and
# deletion, MULTI/EXEC/WATCH, publish/subscribe; EVALSHA, SCRIPT LOAD and EXISTS for kombu's Lua
# scripts: the lock it takes to restore unacknowledged messages, and from kombu 5.7 on the
# expiry of queue bindings, which asks the server's TIME), never an admin or dangerous one
# (CONFIG, MODULE, FLUSHALL, FLUSHDB, SHUTDOWN, DEBUG, ACL, KEYS, SAVE, INFO, ...), nor what
# names the keys and channels of other projects (SCAN, RANDOMKEY, PUBSUB CHANNELS: Redis does
# not filter their answers by the account's patterns; kombu and celery do not use them).
REDIS_COMMANDS = ("-@all", "+@connection", "+@transaction", "+@keyspace", "+@string", "+@list", "+@hash", "+@set",
                  "+@sortedset", "+@pubsub", "+evalsha", "+script|load", "+script|exists", "+time",
                  "-scan", "-randomkey", "-pubsub", "-@admin", "-@dangerous")


def password_file(inventory: Inventory) -> str:
    return f"{Layout(inventory.project).fabcelery_dir}/broker-password"


def redis_fragment(inventory: Inventory) -> str:
    """The project's own Redis settings: its ACL user (and, for a fleet, the bind line)."""
    return f"/etc/redis/fabcelery-{inventory.project.name}.conf"


def redis_include(inventory: Inventory) -> str:
    return f"include {redis_fragment(inventory)}"


def redis_include_comment(inventory: Inventory) -> str:
    return f"# Added by fabcelery for the project {inventory.project.name}: its ACL user."


def redis_restart_file(inventory: Inventory) -> str:
    """Written before a change of Redis's config is put in place, removed once Redis has been
    restarted with it: a deploy cut off in between leaves it, and the next one restarts Redis."""
    return f"{Layout(inventory.project).fabcelery_dir}/pending-redis-restart"


def redis_user(inventory: Inventory) -> str:
    return inventory.project.name


def redis_keyprefix(inventory: Inventory) -> str:
    """What every key and channel of the project begins with (kombu's and the result
    backend's global_keyprefix); its Redis account may touch nothing else."""
    return f"{inventory.project.name}:"


# The channel patterns kombu PSUBSCRIBEs to for celery's fanout exchanges (topic `/DB.EXCHANGE`,
# or `/DB.EXCHANGE/ROUTING_KEY` with `#` as `*`; DB 0): remote control (inspect ping, ...),
# the workers' gossip, and an event monitor such as `celery events`. Redis lets an account
# PSUBSCRIBE only to a pattern that is literally one of its own, so `&NAME:*` alone does not
# admit them (measured on Redis 7.0 and 8.0: "No permissions to access a channel").
REDIS_PSUBSCRIBE = ("/0.celery.pidbox", "/0.celeryev/worker.*", "/0.celeryev/*")


def redis_acl(inventory: Inventory, password: str) -> str:
    """The ACL rules of the project's account, after `user NAME`: the password as its SHA-256
    hash (the file holds no clear text), its keys and channels, its commands."""
    prefix = redis_keyprefix(inventory)
    digest = hashlib.sha256(password.encode()).hexdigest()
    return " ".join(["reset", "on", f"#{digest}", "resetkeys", f"~{prefix}*", "resetchannels", f"&{prefix}*",
                     *(f"&{prefix}{pattern}" for pattern in REDIS_PSUBSCRIBE), *REDIS_COMMANDS])


def redis_cli(inventory: Inventory, *args: str) -> str:
    """redis-cli as the project's account; the password comes from REDISCLI_AUTH (redis_auth_env)."""
    return cmd("redis-cli", "--user", redis_user(inventory), *args)


def fragment_context(inventory: Inventory, broker: HostSpec, password: str | None) -> dict:
    """What the broker's config fragment template needs besides template_context."""
    context = {"remote_access": remote_access(inventory, broker), "internal_address": broker.internal_address}
    if inventory.broker.kind == "redis":
        context.update(redis_user=redis_user(inventory), redis_acl=redis_acl(inventory, password or ""))
    return context


def rabbitmq_stamp_file(inventory: Inventory) -> str:
    return f"{Layout(inventory.project).fabcelery_dir}/rabbitmq-account"


def cookie_file(inventory: Inventory) -> str:
    """fabcelery's copy of a cluster's Erlang cookie (0600 root), which the fleet reads back."""
    return f"{Layout(inventory.project).fabcelery_dir}/erlang-cookie"


# --- a RabbitMQ cluster --------------------------------------------------------------------


def cluster_hosts(inventory: Inventory) -> list[HostSpec]:
    """The nodes of a RabbitMQ cluster, in inventory order (the first is the seed); [] when the
    fleet has one broker host (or Redis, or an external broker)."""
    brokers = inventory.broker_hosts()
    if inventory.broker.url or inventory.broker.kind != "rabbitmq" or len(brokers) < 2:
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


def celery_version(inventory: Inventory, facts: Facts) -> str:
    """The celery a host's workers run: the virtualenv's, else the project's pin, else fabcelery's."""
    if facts.dists.get("celery"):
        return facts.dists["celery"]
    layout = Layout(inventory.project)
    text = facts.contents.get(layout.requirements) if layout.requirements else None
    pin = re.search(r"(?im)^\s*celery(?:\[[^\]]*\])?\s*==\s*([0-9][A-Za-z0-9.]*)", text or "")
    return pin[1] if pin else inventory.versions["celery"]


def celery_problem(inventory: Inventory, host: HostSpec, facts: Facts) -> str:
    """Quorum queues need Celery 5.5 or later; a host of a cluster's fleet with an older one is
    refused before anything changes."""
    if not cluster_hosts(inventory) or not (host.has("worker") or host.has("beat")):
        return ""
    version = celery_version(inventory, facts)
    release = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    # queues other than the default one: the pools' own, which Celery creates when asked for
    # them; before 5.6 those would be classic queues, on one node only
    other_queues = sorted({q for pool in inventory.celery.pools.values() for q in pool.queues} - {"celery"})
    if release >= QUORUM_CELERY and (release >= QUORUM_MISSING_CELERY or not other_queues):
        return ""
    if release >= QUORUM_CELERY:
        return (f"this host's Celery is {version}, and on a RabbitMQ cluster the pools' queues "
                f"({', '.join(other_queues)}) need Celery 5.6 or later (before 5.6, Celery declares the queues it "
                "creates for -Q as classic queues, which live on one node only): upgrade the project's celery pin "
                "to 5.6 or later, or let every pool consume only the celery queue")
    return (f"this host's Celery is {version}, and a RabbitMQ cluster needs Celery 5.5 or later (its queues are "
            "quorum queues, which Celery declares from 5.5 on; Arches 7.5 to 8.0 pin celery 5.3.6): upgrade the "
            "project's celery pin to 5.5 or later, or use one broker host")


def broker_unit(inventory: Inventory) -> str:
    return REDIS_UNIT if inventory.broker.kind == "redis" else RABBITMQ_UNIT


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


def rabbitmq_account(inventory: Inventory) -> tuple[str, str]:
    """(user, vhost) of the project on RabbitMQ."""
    return inventory.project.name, inventory.project.name


def broker_url(inventory: Inventory, host: HostSpec, password: str | None) -> str:
    """Where this host's programs find the broker; the password URL-quoted."""
    if inventory.broker.url:
        return url_with_password(inventory.broker.url, password)
    broker = broker_for(inventory, host) or host
    local = broker.name == host.name
    if inventory.broker.kind == "redis":
        where = "localhost" if local else broker.internal_address
        auth = f"{quote(redis_user(inventory), safe='')}:{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{where}:6379/0"
    user, vhost = rabbitmq_account(inventory)

    def amqp(where: str) -> str:
        return f"amqp://{quote(user, safe='')}:{quote(password or '', safe='')}@{where}:5672/{quote(vhost, safe='')}"

    if nodes := cluster_hosts(inventory):
        # every node, for kombu's failover (';'-separated): this host's own node first
        ordered = [n for n in nodes if n.name == host.name] + [n for n in nodes if n.name != host.name]
        return ";".join(amqp("127.0.0.1" if n.name == host.name else n.internal_address) for n in ordered)
    return amqp("127.0.0.1" if local else broker.internal_address)


def url_with_password(url: str, password: str | None) -> str:
    """An external broker URL with the password from the environment put in its user part."""
    if not password:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url.replace("://", f"://:{quote(password, safe='')}@", 1)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{hostport}"))


def redis_quote(value: str) -> str:
    """A string for redis.conf: double-quoted, with escapes for what Redis would misread."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= ord(ch) < 127:
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def fragment(inventory: Inventory, host: HostSpec) -> tuple[str, str, str, str]:
    """(path, template, group, mode) of this broker's config fragment."""
    if inventory.broker.kind == "redis":
        return redis_fragment(inventory), "redis.conf.j2", "redis", "0640"
    return RABBITMQ_FRAGMENT, "rabbitmq.conf.j2", "rabbitmq", "0640"


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


def rabbitmq_node_files(inventory: Inventory, host: HostSpec) -> list[NodeFile]:
    if not manages_broker(inventory, host) or inventory.broker.kind != "rabbitmq":
        return []
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


def plan_broker(inventory: Inventory, host: HostSpec, facts: Facts, password: str | None,
                rendered_fragment: str, node_files: tuple[tuple[NodeFile, str], ...] = (),
                cookie: str | None = None) -> StepPlan:
    """Decide the broker host's changes. `rendered_fragment` is the broker's config fragment,
    `node_files` RabbitMQ's rabbitmq_node_files with their rendered contents, `cookie` a
    cluster's Erlang cookie (the fleet's shared value)."""
    if not manages_broker(inventory, host):
        return ok(StepName.BROKER, "not a broker host" if not inventory.broker.url else "external broker (broker.url)")
    path, _, group, mode = fragment(inventory, host)
    unit = broker_unit(inventory)
    redis = inventory.broker.kind == "redis"
    actions: list[Action] = []
    restart = restart_epmd = False

    pw_file = password_file(inventory)
    if password and facts.checksums.get(pw_file) != sha256(password):
        # New (or given anew in the environment): kept on the broker host, read by later deploys.
        actions.append(Action(f"keep the broker password in {pw_file} (0600, root)",
                              uploads=(Upload(pw_file, password, "root", "root", "0600", secret=True,
                                              diff=False),)))
    uploads = []
    if facts.checksums.get(path) != sha256(rendered_fragment):
        uploads.append(Upload(path, rendered_fragment, "root", group, mode, secret=True,
                              validate=Validator.REDIS if redis else None,
                              old_content=facts.contents.get(path)))
    cluster = in_cluster(inventory, host)
    if cluster and not cookie:
        return fail(StepName.BROKER,
                    "a node of a RabbitMQ cluster needs the cluster's Erlang cookie, and none was given")
    if cluster and facts.checksums.get(cookie_file(inventory)) != sha256(cookie):
        actions.append(Action(f"keep the cluster's Erlang cookie in {cookie_file(inventory)} (0600, root)",
                              uploads=(Upload(cookie_file(inventory), cookie, "root", "root", "0600", secret=True,
                                              diff=False),)))
    for spec, content in node_files:
        if facts.checksums.get(spec.target) != sha256(content):
            uploads.append(Upload(spec.target, content, validate=spec.validate,
                                  old_content=facts.contents.get(spec.target)))
            restart_epmd = restart_epmd or spec.epmd
    if cluster and facts.checksums.get(RABBITMQ_COOKIE) != sha256(cookie):
        # the node reads its cookie at start: a new one takes a restart (so does a joiner's first)
        uploads.append(Upload(RABBITMQ_COOKIE, cookie, "rabbitmq", "rabbitmq", "0400", secret=True, diff=False))
    reload_inetrc = (cluster and [u.target for u in uploads] == [RABBITMQ_INETRC] and facts.systemd
                     and facts.service_active(RABBITMQ_UNIT))
    if uploads:
        actions.append(Action(f"install {', '.join(u.target for u in uploads)}", uploads=tuple(uploads),
                              # Redis reads the file only when it starts: from the moment the file is in
                              # place until Redis has been restarted, the host records that it still has to be
                              before_rename=record_redis_restart(inventory) if redis else ""))
        restart = not reload_inetrc
    if reload_inetrc:
        # only the peers changed (a node added): the running node reads them anew, with no restart,
        # so adding nodes never restarts the ones that serve (its CLI tools read the file at start)
        actions.append(Action(f"{rabbit_node(host)} reads the cluster's names anew from {RABBITMQ_INETRC}",
                              cmd("timeout", "60", "rabbitmqctl", "-q", "eval",
                                  f'ok = inet_db:add_rc("{RABBITMQ_INETRC}").') + " >/dev/null"))
    if node_files and (include := Line(RABBITMQ_ENV_CONF, RABBITMQ_ENV_INCLUDE, RABBITMQ_ENV_INCLUDE_COMMENT,
                                       summary=f"source {RABBITMQ_ENV} at the end of {RABBITMQ_ENV_CONF}"
                                       ).diff(facts).actions):
        actions += include
        restart = True
    if redis:
        conf_actions = redis_conf_actions(inventory, facts)
        actions += conf_actions
        restart = restart or bool(conf_actions) or redis_restart_file(inventory) in facts.contents

    service = ""
    if facts.systemd:
        if not facts.service_enabled(unit):
            service += cmd("systemctl", "enable", "--quiet", unit) + "\n"
        if restart_epmd:
            service += epmd_restart_script(unit)
        # restart, not start: a package installed by this deploy is already running
        # with its default config
        if restart:
            service += cmd("systemctl", "restart", unit) + "\n"
        elif not facts.service_active(unit):
            service += cmd("systemctl", "start", unit) + "\n"
    elif restart or not _answers(inventory, facts):
        name = unit.removesuffix(".service")
        service += cmd("service", name, "restart" if restart else "start") + " >/dev/null\n"
    if service or not _answers(inventory, facts):
        # set -e: a failed enable or restart ends the action at once, with systemctl's own words;
        # only a restarted Redis that answers its account's ping clears the pending restart
        done = ("\n" + cmd("rm", "-f", redis_restart_file(inventory))) if redis and restart else ""
        summary = f"restart and check {unit}" if restart else f"start and check {unit}"
        actions.append(Action(summary, "set -e\n" + service + wait_script(inventory) + done))

    role = formation(inventory, host, facts) if cluster else "seed"
    if role == "join":
        seed = cluster_seed(inventory)
        actions.append(Action(f"join the RabbitMQ cluster of {rabbit_node(seed)} as {rabbit_node(host)}",
                              join_script(host, seed)))
    if inventory.broker.kind == "rabbitmq" and role == "seed":
        # users, vhosts and permissions are the cluster's: set up once, on the seed
        user, vhost = rabbitmq_account(inventory)
        stamp = rabbitmq_stamp(user, vhost, password or "")
        if facts.contents.get(rabbitmq_stamp_file(inventory)) != stamp:
            actions.append(Action(f"RabbitMQ vhost {vhost}, user {user} with its password, no guest",
                                  rabbitmq_account_script(inventory, stamp)))
    if not actions:
        what = "redis-server" if redis else "rabbitmq-server"
        if cluster:
            return ok(StepName.BROKER, f"{what} configured, enabled and running; {rabbit_node(host)} "
                                + ("seeds the cluster" if role == "seed" else "is a member of the cluster"))
        return ok(StepName.BROKER, f"{what} configured, enabled and running")
    return change(StepName.BROKER, *actions, restarts_redis=redis and restart)


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


def record_redis_restart(inventory: Inventory) -> str:
    """sh: note on the host that Redis must be restarted (see redis_restart_file)."""
    record = redis_restart_file(inventory)
    return "\n".join([
        cmd("printf", "%s\\n", f"restart redis-server: {redis_fragment(inventory)} or {REDIS_CONF} changed")
        + " > " + cmd(record + ".new"),
        cmd("mv", "-f", record + ".new", record),
    ])


def redis_conf_actions(inventory: Inventory, facts: Facts) -> list[Action]:
    """redis.conf: the line that turns the passwordless `default` user off, the project's own
    include line, and no more the shared fragment of earlier versions. Each action records the
    pending restart before it changes anything."""
    record = record_redis_restart(inventory)
    actions = []
    old_lines = [line for line in (OLD_REDIS_INCLUDE, OLD_REDIS_INCLUDE_COMMENT) if facts.lines.get((REDIS_CONF, line))]
    if old_lines or facts.checksums.get(OLD_REDIS_FRAGMENT):
        actions.append(Action(f"remove {OLD_REDIS_FRAGMENT} (one file for every project, from an earlier "
                              "fabcelery) and its include line",
                              "\n".join([record, *([remove_lines_script(REDIS_CONF, old_lines)] if old_lines else []),
                                         cmd("rm", "-f", OLD_REDIS_FRAGMENT)]),
                              quick=True))
    refuse = (f"{REDIS_CONF} declares Redis's default user itself; turn it off there ({REDIS_DEFAULT_OFF}) or "
              "remove that line: Redis refuses a user declared twice, and each project has an account of its own")
    actions += Line(
        REDIS_CONF, REDIS_DEFAULT_OFF, REDIS_DEFAULT_OFF_COMMENT,
        summary=f"turn off Redis's passwordless default user ({REDIS_DEFAULT_OFF} in {REDIS_CONF})",
        before="\n".join([
            f"if grep -Eq '^[[:space:]]*user[[:space:]]+default([[:space:]]|$)' {cmd(REDIS_CONF)}; then "
            f"echo {cmd(refuse)} >&2; exit 1; fi",
            record,
        ]),
    ).diff(facts).actions
    actions += Line(REDIS_CONF, redis_include(inventory), redis_include_comment(inventory),
                    summary=f"include {redis_fragment(inventory)} at the end of {REDIS_CONF}",
                    before=record).diff(facts).actions
    return actions


def remove_lines_script(path: str, lines: list[str]) -> str:
    """sh: the file without these exact lines; its owner and mode kept, replaced by a rename."""
    directory, _, base = path.rpartition("/")
    new = f"{directory}/.{base}.fabcelery-new"
    patterns = " ".join(cmd("-e", line) for line in lines)
    return "\n".join([
        cmd("cp", "-p", path, new),
        # grep -v: status 1 when no line is left (then the file is empty), 2 on an error
        f"grep -vxF {patterns} {cmd(path)} > {cmd(new)} || [ $? -eq 1 ]",
        cmd("mv", "-f", new, path),
    ])


def _answers(inventory: Inventory, facts: Facts) -> bool:
    if inventory.broker.kind == "redis":
        return facts.redis_ping == "PONG"
    return facts.service_active(RABBITMQ_UNIT) or not facts.systemd


def wait_script(inventory: Inventory) -> str:
    """Wait (bounded) until the broker answers: after a start it needs a moment."""
    if inventory.broker.kind == "redis":
        who = redis_user(inventory)
        return "\n".join([
            redis_auth_env(inventory),
            "i=0",
            # the last answer is told on failure (NOAUTH, WRONGPASS, ...; never the password)
            f'until a="$(timeout 3 {redis_cli(inventory, "ping")} 2>&1)"; [ "$a" = PONG ]; do',
            '  i=$((i+1)); if [ "$i" -ge 60 ]; then',
            f"    echo {cmd(f'redis-server does not answer redis-cli --user {who} ping:')} \"$a\" >&2; exit 1; fi",
            "  sleep 0.25",
            "done",
        ])
    return "\n".join([
        "i=0",
        "until rabbitmq-diagnostics -q ping >/dev/null 2>&1; do",
        '  i=$((i+1)); if [ "$i" -ge 60 ]; then',
        "    echo 'rabbitmq-server does not answer rabbitmq-diagnostics ping' >&2; exit 1; fi",
        "  sleep 1",
        "done",
    ])


def redis_auth_env(inventory: Inventory) -> str:
    """redis-cli takes the password from REDISCLI_AUTH, read from the 0600 file: never an argument.
    Used with redis_cli(), which names the project's account (--user NAME)."""
    pw = cmd(password_file(inventory))
    return f'if [ -s {pw} ]; then REDISCLI_AUTH="$(cat {pw})"; export REDISCLI_AUTH; fi'



def rabbitmq_stamp(user: str, vhost: str, password: str) -> str:
    """What the account was set up with; a hash, so the stamp file gives no password away."""
    return hashlib.sha256(f"{user}\n{vhost}\n{password}".encode()).hexdigest() + "\n"


def rabbitmq_account_script(inventory: Inventory, stamp: str) -> str:
    user, vhost = rabbitmq_account(inventory)
    pw = cmd(password_file(inventory))
    return "\n".join([
        "set -e",
        cmd("rabbitmqctl", "-q", "add_vhost", vhost) + " >/dev/null 2>&1 || true",
        # The password is read from stdin when not given as an argument. Not with -q:
        # RabbitMQ 4.0's rabbitmqctl then waits forever instead of reading it.
        f"if rabbitmqctl -q list_users | cut -f1 | grep -qx {cmd(user)}; then",
        f"  {cmd('rabbitmqctl', 'change_password', user)} < {pw} >/dev/null",
        "else",
        f"  {cmd('rabbitmqctl', 'add_user', user)} < {pw} >/dev/null",
        "fi",
        cmd("rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*") + " >/dev/null",
        "if rabbitmqctl -q list_users | cut -f1 | grep -qx guest; then rabbitmqctl -q delete_user guest >/dev/null; fi",
        f"(umask 077; printf %s {cmd(stamp)} > {cmd(rabbitmq_stamp_file(inventory))})",
    ])


def password_script(inventory: Inventory) -> str:
    """Read the password kept on the broker host (printed to our captured, never-shown stdout)."""
    path = cmd(password_file(inventory))
    return f"if [ -s {path} ]; then cat {path}; fi"


def new_password() -> str:
    """32 letters and digits: strong, and nothing that needs quoting anywhere."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def broker_needs(inventory: Inventory, host: HostSpec, with_contents: bool = False) -> ProbeSpec:
    """What the broker step needs to know of a host (a part of the deploy's one probe)."""
    if not manages_broker(inventory, host):
        return ProbeSpec(services=(broker_unit(inventory),))
    node_files = [f.target for f in rabbitmq_node_files(inventory, host)]
    files = [fragment(inventory, host)[0], password_file(inventory), *node_files]
    # the password file too: a fleet deploy takes the kept password from here (tasks/fleet.py)
    contents = [rabbitmq_stamp_file(inventory), password_file(inventory)] + ([files[0], *node_files]
                                                                            if with_contents else [])
    redis = inventory.broker.kind == "redis"
    if redis:
        files.append(OLD_REDIS_FRAGMENT)                 # left by an earlier fabcelery: removed
        contents.append(redis_restart_file(inventory))   # a restart a cut-off deploy still owes
        lines = [(REDIS_CONF, redis_include(inventory)), (REDIS_CONF, REDIS_DEFAULT_OFF),
                 (REDIS_CONF, OLD_REDIS_INCLUDE), (REDIS_CONF, OLD_REDIS_INCLUDE_COMMENT)]
    else:
        lines = [(RABBITMQ_ENV_CONF, RABBITMQ_ENV_INCLUDE)]
    if in_cluster(inventory, host):
        # the cookie (ours, read back by the fleet, and the node's) and the node's membership
        files += [cookie_file(inventory), RABBITMQ_COOKIE]
        contents += [cookie_file(inventory), cluster_nodes_file(host)]
    return ProbeSpec(checksums=tuple(files), contents=tuple(contents), lines=tuple(lines),
                     services=(broker_unit(inventory),), redis_ping=redis,
                     redis_user=redis_user(inventory) if redis else "")
