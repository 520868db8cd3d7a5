"""RabbitMQ as a project's broker: a vhost and a user of its own, and no `guest`; rabbitmqctl
reads the password on stdin. A single node, or three or five nodes of one cluster
(tasks/rabbitmq_cluster.py), whose Erlang side is tasks/erlang.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from urllib.parse import quote

from .broker_host import password_file
from .erlang import (
    RABBITMQ_ENV,
    RABBITMQ_ENV_CONF,
    RABBITMQ_ENV_INCLUDE,
    RABBITMQ_ENV_INCLUDE_COMMENT,
    NodeFile,
    epmd_restart_script,
    node_files,
)
from .file_edits import Line
from .inventory import HostSpec, Inventory
from .layout import Layout
from .plan import Action
from .probe import Facts, ProbeSpec
from .rabbitmq_cluster import cluster_hosts, cluster_seed, in_cluster
from .resources import Custom, doing, nothing
from .resources_files import File
from .scripts import text
from .shell import cmd

RABBITMQ_UNIT = "rabbitmq-server.service"

RABBITMQ_FRAGMENT = "/etc/rabbitmq/conf.d/50-fabcelery.conf"

# epmd.socket anew (its listening addresses came from the drop-in just removed), then the node
RABBITMQ_RESTART = epmd_restart_script(RABBITMQ_UNIT) + cmd("systemctl", "restart", RABBITMQ_UNIT)



def rabbitmq_account(inventory: Inventory) -> tuple[str, str]:
    """(user, vhost) of the project on RabbitMQ."""
    return inventory.project.name, inventory.project.name



def rabbitmq_stamp_file(inventory: Inventory) -> str:
    return f"{Layout(inventory.project).fabcelery_dir}/rabbitmq-account"



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



def wait_script() -> str:
    """Wait (bounded) until RabbitMQ answers: after a start it needs a moment."""
    return "\n".join([
        "i=0",
        "until rabbitmq-diagnostics -q ping >/dev/null 2>&1; do",
        '  i=$((i+1)); if [ "$i" -ge 60 ]; then',
        "    echo 'rabbitmq-server does not answer rabbitmq-diagnostics ping' >&2; exit 1; fi",
        "  sleep 1",
        "done",
    ])


# rabbitmq-env.conf's line that sources fabcelery's (where epmd and Erlang distribution listen)
ENV_INCLUDE = Line(RABBITMQ_ENV_CONF, RABBITMQ_ENV_INCLUDE, RABBITMQ_ENV_INCLUDE_COMMENT,
                   summary=f"source {RABBITMQ_ENV} at the end of {RABBITMQ_ENV_CONF}")


@dataclass(frozen=True)
class RabbitMQ:
    """The RabbitMQ strategy of tasks/broker.py (a single node, or a node of a cluster)."""

    inventory: Inventory
    name = "rabbitmq-server"
    unit = RABBITMQ_UNIT
    fragment_validator = None
    records_restart = False
    # the timeout of a task handed out and not acknowledged (tasks/timeouts.py): the server's,
    # so only on a RabbitMQ that fabcelery sets up
    timeout_key = "consumer_timeout"
    # its conf.d, and the drop-in's directory that puts epmd on loopback (tasks/erlang.py EPMD_DROPIN)
    system_dirs = ("/etc/rabbitmq/conf.d", "/etc/systemd/system/epmd.socket.d")
    shared_default_user = False             # its guest is deleted, whoever else is on the node
    celery_extra = ""

    def timeout_applies(self) -> bool:
        return not self.inventory.broker.url

    def key_prefix(self) -> str:
        return ""                           # the project's vhost keeps its queues apart

    def watchdog_keys(self, queues: list[str]) -> dict:
        return {}                           # the watchdog asks rabbitmqctl (tasks/scripts/watchdog.py)

    def fragment(self) -> tuple[str, str, str, str]:
        return RABBITMQ_FRAGMENT, "rabbitmq.conf.j2", "rabbitmq", "0640"

    def fragment_context(self, password: str | None) -> dict:
        return {}

    def url(self, host: HostSpec, broker: HostSpec, password: str | None) -> str:
        user, vhost = rabbitmq_account(self.inventory)

        def amqp(where: str) -> str:
            return (f"amqp://{quote(user, safe='')}:{quote(password or '', safe='')}@{where}:5672/"
                    f"{quote(vhost, safe='')}")

        if nodes := cluster_hosts(self.inventory):
            # every node, for kombu's failover (';'-separated): this host's own node first
            ordered = [n for n in nodes if n.name == host.name] + [n for n in nodes if n.name != host.name]
            return ";".join(amqp("127.0.0.1" if n.name == host.name else n.internal_address) for n in ordered)
        return amqp("127.0.0.1" if broker.name == host.name else broker.internal_address)

    def needs(self, host: HostSpec) -> ProbeSpec:
        return ProbeSpec(lines=((RABBITMQ_ENV_CONF, RABBITMQ_ENV_INCLUDE),))

    def node_files(self) -> list[NodeFile]:
        return node_files()

    def before_install(self) -> str:
        return ""

    def config_actions(self, facts: Facts, node_files: bool) -> tuple[list[Action], bool]:
        """rabbitmq-env.conf's line that sources fabcelery's (its Erlang side): a change restarts the node."""
        if node_files and (include := ENV_INCLUDE.diff(facts).actions):
            return list(include), True
        return [], False

    def after_restart(self) -> str:
        return ""

    def account_actions(self, facts: Facts, password: str | None, role: str) -> list[Action]:
        if role != "seed":
            return []
        # users, vhosts and permissions are the cluster's: set up once, on the seed
        user, vhost = rabbitmq_account(self.inventory)
        stamp = rabbitmq_stamp(user, vhost, password or "")
        if facts.contents.get(rabbitmq_stamp_file(self.inventory)) == stamp:
            return []
        return [Action(f"RabbitMQ vhost {vhost}, user {user} with its password, no guest",
                       rabbitmq_account_script(self.inventory, stamp))]

    def answers(self, facts: Facts) -> bool:
        return facts.service_active(RABBITMQ_UNIT) or not facts.systemd

    def wait_script(self) -> str:
        return wait_script()

    def health(self, facts: Facts) -> tuple[str, str]:
        healthy = facts.rabbitmq_ping
        return ("UP" if healthy else "DOWN",
                "rabbitmq-diagnostics ping: " + ("ok" if healthy else "no answer")
                if healthy is not None else "rabbitmq-diagnostics is not installed")

    def status_part(self, host: HostSpec) -> tuple[str, dict[str, object]]:
        if in_cluster(self.inventory, host):
            # the node's queues, read over AMQP with the project's account (amqp_queues.py)
            user, vhost = rabbitmq_account(self.inventory)
            return "status-cluster.sh", {"amqppy": text("amqp_queues.py"), "amqpuser": user, "vhost": vhost,
                                         "passwordfile": password_file(self.inventory)}
        return "status-rabbitmq.sh", {"vhost": rabbitmq_account(self.inventory)[1]}

    def counts_section(self, host: HostSpec) -> str | None:
        # a cluster's queues come over AMQP in status-cluster.sh (tasks/status.py: status_operation)
        return None if in_cluster(self.inventory, host) else "rabbitmq"

    def restart_program(self) -> tuple[str, dict[str, object]]:
        return "broker-up-rabbitmq.sh", {}

    def undeploy_resources(self, host: HostSpec, facts: Facts, purge: bool, others: bool) -> tuple[list, bool]:
        """fab undeploy: the project's vhost and user (on the seed of a cluster), and, when no other
        project's account is there (`others`) and the node leaves (--purge, or a single node), its
        node files, with RabbitMQ restarted on its own settings; (resources, whether they go)."""
        inventory = self.inventory
        resources = []
        if not in_cluster(inventory, host) or cluster_seed(inventory).name == host.name:
            resources.append(rabbitmq_account_absent(inventory))
        node_files_go = not others and (purge or not in_cluster(inventory, host))
        if node_files_go:
            # the files a deploy installs (broker_resources): the fragment and the node files
            files = [File(path, present=False)
                     for path in (self.fragment()[0], *(f.target for f in self.node_files()))]
            line = replace(ENV_INCLUDE, present=False)
            resources += [*files, line]

            def restart(facts: Facts, changes=tuple([*files, line])) -> object:
                if not any(r.diff(facts).actions for r in changes) or not facts.installed("rabbitmq-server") \
                        or not facts.systemd:
                    return nothing("RabbitMQ runs with its own settings")
                return doing(Action("restart rabbitmq-server with its own settings", RABBITMQ_RESTART))
            resources.append(Custom("RabbitMQ restart", decide=restart))
        return resources, node_files_go




def rabbitmq_account_absent(inventory: Inventory) -> Custom:
    user, vhost = rabbitmq_account(inventory)
    stamp = rabbitmq_stamp_file(inventory)

    def decide(facts: Facts) -> object:
        if facts.contents.get(stamp) is None or not facts.installed("rabbitmq-server"):
            return nothing(f"RabbitMQ has no vhost or user {user} of fabcelery's")
        script = "\n".join([
            "set -e",
            # the vhost with its queues and their messages
            f"if rabbitmqctl -q list_vhosts | grep -qx {cmd(vhost)}; then "
            + cmd("rabbitmqctl", "-q", "delete_vhost", vhost) + " >/dev/null; fi",
            f"if rabbitmqctl -q list_users | cut -f1 | grep -qx {cmd(user)}; then "
            + cmd("rabbitmqctl", "-q", "delete_user", user) + " >/dev/null; fi",
            cmd("rm", "-f", stamp),
        ])
        return doing(Action(f"delete RabbitMQ vhost {vhost} (its queues and messages) and user {user}", script))

    return Custom(f"RabbitMQ account {user}", ProbeSpec(contents=(stamp,), packages=("rabbitmq-server",)), decide,
                  present=False)
