"""The broker step: Redis or RabbitMQ from the OS packages, enabled and running under
systemd, bound and authenticated as the fleet needs, answering ping; and the URL the
workers use to reach it.

Every project authenticates with an account of its own, also on a single host: Redis an ACL
user (tasks/redis_broker.py), RabbitMQ a vhost and a user (tasks/rabbitmq_broker.py). The
broker listens on loopback unless workers on other hosts need it; then also on the broker
host's internal address. RabbitMQ's Erlang side (epmd, the distribution port) listens on
loopback only (tasks/erlang.py). Three or five RabbitMQ broker hosts form one cluster
(tasks/rabbitmq_cluster.py), and Celery's queues become quorum queues
(tasks/celery_policy.py).

The choice of broker is made once (tasks/broker_kind.py: broker_of, which each host's Target
holds), and nothing else asks which kind it is. What every kind shares (where the broker is,
its password) is tasks/broker_host.py.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from .broker_host import broker_for, password_file, remote_access
from .checksum import sha256
from .erlang import RABBITMQ_INETRC, NodeFile, epmd_restart_script
from .inventory import HostSpec
from .plan import Action, StepName, StepPlan, Upload, change, fail, ok
from .probe import Facts, ProbeSpec
from .rabbitmq_broker import rabbitmq_account, rabbitmq_stamp_file
from .rabbitmq_cluster import (
    RABBITMQ_COOKIE,
    cluster_nodes_file,
    cluster_seed,
    cookie_file,
    formation,
    join_script,
    queue_survey,
    rabbit_node,
)
from .shell import cmd
from .target import Target


def fragment_context(target: Target, broker: HostSpec, password: str | None) -> dict:
    """What the broker's config fragment template needs besides template_context."""
    context = {"remote_access": remote_access(target.inventory, broker), "internal_address": broker.internal_address}
    context.update(target.broker.fragment_context(password))
    return context


def rabbitmq_node_files(target: Target) -> list[NodeFile]:
    """The files of a RabbitMQ node's Erlang side ([] for Redis, or a broker fabcelery does not manage)."""
    if not target.manages_broker:
        return []
    return target.broker.node_files()


def broker_url(target: Target, password: str | None) -> str:
    """Where this host's programs find the broker; the password URL-quoted."""
    if target.inventory.broker.url:
        return url_with_password(target.inventory.broker.url, password)
    broker = broker_for(target.inventory, target.host) or target.host
    return target.broker.url(target.host, broker, password)


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



def plan_broker(target: Target, facts: Facts, password: str | None,
                rendered_fragment: str, node_files: tuple[tuple[NodeFile, str], ...] = (),
                cookie: str | None = None) -> StepPlan:
    """Decide the broker host's changes. `rendered_fragment` is the broker's config fragment,
    `node_files` RabbitMQ's rabbitmq_node_files with their rendered contents, `cookie` a
    cluster's Erlang cookie (the fleet's shared value)."""
    if not target.manages_broker:
        return ok(StepName.BROKER, "not a broker host" if not target.inventory.broker.url
                  else "external broker (broker.url)")
    kind = target.broker
    path, _, group, mode = kind.fragment()
    unit = kind.unit
    actions: list[Action] = []
    restart = restart_epmd = False

    pw_file = password_file(target.inventory)
    if password and facts.checksums.get(pw_file) != sha256(password):
        # New (or given anew in the environment): kept on the broker host, read by later deploys.
        actions.append(Action(f"keep the broker password in {pw_file} (0600, root)",
                              uploads=(Upload(pw_file, password, "root", "root", "0600", secret=True,
                                              diff=False),)))
    uploads = []
    if facts.checksums.get(path) != sha256(rendered_fragment):
        uploads.append(Upload(path, rendered_fragment, "root", group, mode, secret=True,
                              validate=kind.fragment_validator,
                              old_content=facts.contents.get(path)))
    cluster = target.in_cluster
    if cluster and not cookie:
        return fail(StepName.BROKER,
                    "a node of a RabbitMQ cluster needs the cluster's Erlang cookie, and none was given")
    cookie_path = cookie_file(target.inventory)
    if cluster and facts.checksums.get(cookie_path) != sha256(cookie):
        actions.append(Action(f"keep the cluster's Erlang cookie in {cookie_path} (0600, root)",
                              uploads=(Upload(cookie_path, cookie, "root", "root", "0600", secret=True, diff=False),)))
    for spec, content in node_files:
        if facts.checksums.get(spec.target) != sha256(content):
            uploads.append(Upload(spec.target, content, validate=spec.validate,
                                  old_content=facts.contents.get(spec.target)))
            restart_epmd = restart_epmd or spec.epmd
    if cluster and facts.checksums.get(RABBITMQ_COOKIE) != sha256(cookie):
        # the node reads its cookie at start: a new one takes a restart (so does a joiner's first)
        uploads.append(Upload(RABBITMQ_COOKIE, cookie, "rabbitmq", "rabbitmq", "0400", secret=True, diff=False))
    reload_inetrc = (cluster and [u.target for u in uploads] == [RABBITMQ_INETRC] and facts.systemd
                     and facts.service_active(unit))
    if uploads:
        actions.append(Action(f"install {', '.join(u.target for u in uploads)}", uploads=tuple(uploads),
                              before_rename=kind.before_install()))
        restart = not reload_inetrc
    if reload_inetrc:
        # only the peers changed (a node added): the running node reads them anew, with no restart,
        # so adding nodes never restarts the ones that serve (its CLI tools read the file at start)
        actions.append(Action(f"{rabbit_node(target.host)} reads the cluster's names anew from {RABBITMQ_INETRC}",
                              cmd("timeout", "60", "rabbitmqctl", "-q", "eval",
                                  f'ok = inet_db:add_rc("{RABBITMQ_INETRC}").') + " >/dev/null"))
    conf_actions, conf_restart = kind.config_actions(facts, bool(node_files))
    actions += conf_actions
    restart = restart or conf_restart

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
    elif restart or not kind.answers(facts):
        name = unit.removesuffix(".service")
        service += cmd("service", name, "restart" if restart else "start") + " >/dev/null\n"
    if service or not kind.answers(facts):
        # set -e: a failed enable or restart ends the action at once, with systemctl's own words
        done = kind.after_restart() if restart else ""
        summary = f"restart and check {unit}" if restart else f"start and check {unit}"
        actions.append(Action(summary, "set -e\n" + service + kind.wait_script() + done))

    role = formation(target.inventory, target.host, facts) if cluster else "seed"
    if role == "join":
        seed = cluster_seed(target.inventory)
        actions.append(Action(f"join the RabbitMQ cluster of {rabbit_node(seed)} as {rabbit_node(target.host)}",
                              join_script(target.host, seed)))
    actions += kind.account_actions(facts, password, role)
    if not actions:
        what = kind.name
        if cluster:
            return ok(StepName.BROKER, f"{what} configured, enabled and running; {rabbit_node(target.host)} "
                                + ("seeds the cluster" if role == "seed" else "is a member of the cluster"))
        return ok(StepName.BROKER, f"{what} configured, enabled and running")
    return change(StepName.BROKER, *actions, restarts_redis=kind.records_restart and restart)



def broker_needs(target: Target, with_contents: bool = False) -> ProbeSpec:
    """What the broker step needs to know of a host (a part of the deploy's one probe)."""
    kind = target.broker
    if not target.manages_broker:
        return ProbeSpec(services=(kind.unit,))
    node_files = [f.target for f in rabbitmq_node_files(target)]
    files = [kind.fragment()[0], password_file(target.inventory), *node_files]
    # the password file too: a fleet deploy takes the kept password from here (tasks/fleet.py)
    contents = [rabbitmq_stamp_file(target.inventory), password_file(target.inventory)]
    contents += [files[0], *node_files] if with_contents else []
    own = kind.needs(target.host)
    files += own.checksums
    contents += own.contents
    if target.in_cluster:
        # the cookie (ours, read back by the fleet, and the node's) and the node's membership
        files += [cookie_file(target.inventory), RABBITMQ_COOKIE]
        contents += [cookie_file(target.inventory), cluster_nodes_file(target.host)]
    survey = queue_survey(target.inventory, target.host, rabbitmq_account(target.inventory)[1]) \
        if target.in_cluster else None
    return ProbeSpec(checksums=tuple(files), contents=tuple(contents), lines=own.lines,
                     services=(kind.unit,), redis_ping=own.redis_ping, redis_user=own.redis_user,
                     rabbitmq_queues=survey)
