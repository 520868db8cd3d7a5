"""Redis as a project's broker: an ACL user named after the project, which may touch only keys
and channels that begin with `NAME:` and run only the commands kombu and celery's result
backend use; its settings in a fragment of its own (/etc/redis/fabcelery-NAME.conf), included
by a line of its own in redis.conf, so two projects on one Redis never rewrite each other's
file; Redis's passwordless `default` user is turned off. The fragment holds only the
password's SHA-256 hash; redis-cli reads the password from REDISCLI_AUTH.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from urllib.parse import quote

from .broker_host import password_file
from .erlang import NodeFile
from .file_edits import Line, remove_lines_script
from .inventory import HostSpec, Inventory
from .layout import Layout
from .plan import Action, Validator
from .probe import Facts, ProbeSpec
from .programs import inventory_queues
from .resources import Custom, doing, nothing
from .resources_files import File
from .shell import cmd

UNACKED_KEY = "unacked"        # kombu's Redis transport: the messages taken and not yet acknowledged

REDIS_UNIT = "redis-server.service"

REDIS_CONF = "/etc/redis/redis.conf"

REDIS_FRAGMENTS = ("/etc/redis", "fabcelery-*.conf")   # every project's fragment (redis_fragment)

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



def redis_auth_env(inventory: Inventory) -> str:
    """redis-cli takes the password from REDISCLI_AUTH, read from the 0600 file: never an argument.
    Used with redis_cli(), which names the project's account (--user NAME)."""
    pw = cmd(password_file(inventory))
    return f'if [ -s {pw} ]; then REDISCLI_AUTH="$(cat {pw})"; export REDISCLI_AUTH; fi'



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
    default_off, include = redis_conf_lines(inventory)
    return actions + list(default_off.diff(facts).actions) + list(include.diff(facts).actions)


def redis_conf_lines(inventory: Inventory) -> tuple[Line, Line]:
    """redis.conf's lines of fabcelery's, as a deploy adds them (each recording first that Redis
    owes a restart) and an undeploy takes them out: the passwordless `default` user off
    (refused where redis.conf declares that user itself), and the project's include."""
    record = record_redis_restart(inventory)
    refuse = (f"{REDIS_CONF} declares Redis's default user itself; turn it off there ({REDIS_DEFAULT_OFF}) or "
              "remove that line: Redis refuses a user declared twice, and each project has an account of its own")
    default_off = Line(
        REDIS_CONF, REDIS_DEFAULT_OFF, REDIS_DEFAULT_OFF_COMMENT,
        summary=f"turn off Redis's passwordless default user ({REDIS_DEFAULT_OFF} in {REDIS_CONF})",
        before="\n".join([
            f"if grep -Eq '^[[:space:]]*user[[:space:]]+default([[:space:]]|$)' {cmd(REDIS_CONF)}; then "
            f"echo {cmd(refuse)} >&2; exit 1; fi",
            record,
        ]),
    )
    include = Line(REDIS_CONF, redis_include(inventory), redis_include_comment(inventory),
                   summary=f"include {redis_fragment(inventory)} at the end of {REDIS_CONF}", before=record)
    return default_off, include



def redis_keys(inventory: Inventory) -> list[str]:
    """The keys the status script reads, in this order: each queue's list, then the unacked hash."""
    prefix = redis_keyprefix(inventory)
    return [prefix + q for q in inventory_queues(inventory)] + [prefix + UNACKED_KEY]


@dataclass(frozen=True)
class Redis:
    """The Redis strategy of tasks/broker.py: what differs from RabbitMQ, in one place."""

    inventory: Inventory
    name = "redis-server"
    unit = REDIS_UNIT
    fragment_validator = Validator.REDIS
    # a change of its config is put in place with a record that Redis must restart, removed
    # once it has (redis_restart_file): a deploy cut off in between restarts it the next time
    records_restart = True
    # the timeout of a task handed out and not acknowledged (tasks/timeouts.py): kombu's
    # transport option, so it applies to an external Redis (broker.url) too
    timeout_key = "visibility_timeout"
    system_dirs: tuple[str, ...] = ()      # directories of its own besides the package's
    # a passwordless `default` user that fabcelery turns off, which other clients may use
    # (tasks/shared_redis.py surveys them first)
    shared_default_user = True
    celery_extra = "[redis]"               # celery's pip extra for this broker

    def timeout_applies(self) -> bool:
        return True

    def key_prefix(self) -> str:
        """What the project's keys and channels begin with ("" on an external Redis: kombu's own names)."""
        return "" if self.inventory.broker.url else redis_keyprefix(self.inventory)

    def watchdog_keys(self, queues: list[str]) -> dict:
        """What the watchdog reads of the broker (tasks/watchdog.py): each queue's list, the unacked hash."""
        prefix = self.key_prefix()
        return {"keys": {q: prefix + q for q in queues}, "unacked": prefix + UNACKED_KEY}

    def fragment(self) -> tuple[str, str, str, str]:
        return redis_fragment(self.inventory), "redis.conf.j2", "redis", "0640"

    def fragment_context(self, password: str | None) -> dict:
        return {"redis_user": redis_user(self.inventory), "redis_acl": redis_acl(self.inventory, password or "")}

    def url(self, host: HostSpec, broker: HostSpec, password: str | None) -> str:
        where = "localhost" if broker.name == host.name else broker.internal_address
        auth = f"{quote(redis_user(self.inventory), safe='')}:{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{where}:6379/0"

    def needs(self, host: HostSpec) -> ProbeSpec:
        """What the broker step needs to know of a Redis host, besides what every broker needs."""
        inventory = self.inventory
        return ProbeSpec(checksums=(OLD_REDIS_FRAGMENT,),           # left by an earlier fabcelery: removed
                         contents=(redis_restart_file(inventory),),   # a restart a cut-off deploy still owes
                         lines=((REDIS_CONF, redis_include(inventory)), (REDIS_CONF, REDIS_DEFAULT_OFF),
                                (REDIS_CONF, OLD_REDIS_INCLUDE), (REDIS_CONF, OLD_REDIS_INCLUDE_COMMENT)),
                         redis_ping=True, redis_user=redis_user(inventory))

    def node_files(self) -> list[NodeFile]:
        return []

    def before_install(self) -> str:
        # Redis reads the file only when it starts: from the moment the file is in
        # place until Redis has been restarted, the host records that it still has to be
        return record_redis_restart(self.inventory)

    def config_actions(self, facts: Facts, node_files: bool) -> tuple[list[Action], bool]:
        """redis.conf's lines, and whether Redis must restart (they changed, or a restart is owed)."""
        actions = redis_conf_actions(self.inventory, facts)
        return actions, bool(actions) or redis_restart_file(self.inventory) in facts.contents

    def after_restart(self) -> str:
        # only a restarted Redis that answers its account's ping clears the pending restart
        return "\n" + cmd("rm", "-f", redis_restart_file(self.inventory))

    def account_actions(self, facts: Facts, password: str | None, role: str) -> list[Action]:
        return []          # the account is the ACL user of the fragment

    def answers(self, facts: Facts) -> bool:
        return facts.redis_ping == "PONG"

    def wait_script(self) -> str:
        """Wait (bounded) until Redis answers its account's ping: after a start it needs a moment."""
        inventory = self.inventory
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

    def health(self, facts: Facts) -> tuple[str, str]:
        """fab status's row of the broker: (UP or DOWN, why)."""
        answer = facts.redis_ping
        if answer == "PONG":
            return "UP", "redis-cli ping: PONG"
        return "DOWN", (f"redis-cli ping: {answer or 'no answer'}" if answer is not None
                        else "redis-cli is not installed")

    def status_part(self, host: HostSpec) -> tuple[str, dict[str, object]]:
        """fab status's program for the broker (tasks/scripts/), with its options."""
        inventory = self.inventory
        return "status-redis.sh", {"redisuser": redis_user(inventory), "passwordfile": password_file(inventory),
                                   "keys": " ".join(redis_keys(inventory))}

    def counts_section(self, host: HostSpec) -> str | None:
        """The section of fab status's output that holds the queues' counts (tasks/queues.py)."""
        return "redis"

    def restart_program(self) -> tuple[str, dict[str, object]]:
        """restart-broker: the program that waits until the broker is back (tasks/scripts/), its options."""
        return "broker-up-redis.sh", {"redisuser": redis_user(self.inventory),
                                      "passwordfile": password_file(self.inventory)}

    def undeploy_resources(self, host: HostSpec, facts: Facts, purge: bool, others: bool) -> tuple[list, bool]:
        """fab undeploy: the project's fragment and include line, absent, and Redis restarted
        without them; `user default off` too once no other project's fragment is there.
        (resources, whether the node files go: Redis has none)."""
        inventory = self.inventory
        fragment = redis_fragment(inventory)
        default_off, include = redis_conf_lines(inventory)
        resources: list = [File(fragment, present=False), replace(include, present=False)]
        # Redis's default user stays off while another project's fragment is there
        if not [p for p in facts.listings.get(REDIS_FRAGMENTS, ()) if p != fragment]:
            resources.append(replace(default_off, present=False))

        def restart(facts: Facts, changes=tuple(resources)) -> object:
            if not any(r.diff(facts).actions for r in changes) or not facts.installed("redis-server"):
                return nothing("Redis runs without the project's account")
            wait = ("i=0; until timeout 3 redis-cli ping 2>&1 | grep -Eq 'PONG|NOAUTH'; do i=$((i+1)); "
                    "[ $i -ge 60 ] && { echo 'Redis did not answer after its restart' >&2; exit 1; }; sleep 0.5; done")
            start = (cmd("systemctl", "restart", REDIS_UNIT) if facts.systemd
                     else cmd("service", "redis-server", "restart") + " >/dev/null")
            return doing(Action("restart redis-server: the project's account is gone from it",
                                "set -e\n" + start + "\n" + wait))
        resources.append(Custom("Redis restart", decide=restart))
        return resources, False
