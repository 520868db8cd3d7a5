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

from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from .broker_host import broker_for, needs_password, password_file, remote_access
from .erlang import NodeFile, node_context
from .inventory import HostSpec
from .plan import Action, StepName, StepPlan, Upload, fail, ok
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
from .rendering import TemplateError, render
from .resources import plan_resources
from .resources_broker import BrokerFiles, BrokerService, KeptSecret, KindChanges, PeersReread
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



def plan_broker(target: Target, facts: Facts, context: dict, templates: list[Path], password: str | None,
                cookie: str | None) -> StepPlan:
    """Decide the broker host's changes: its config fragment and RabbitMQ's node files rendered
    from the deploy's template context, the fleet's password and, for a cluster, its Erlang
    cookie (the fleet's shared values)."""
    if not target.manages_broker:
        return ok(StepName.BROKER, "not a broker host" if not target.inventory.broker.url
                  else "external broker (broker.url)")
    broker = broker_for(target.inventory, target.host)
    if needs_password(target.inventory, broker) and not password:
        return fail(StepName.BROKER, "no broker password was given (the project's own account needs one)")
    try:
        rendered_fragment, node_files = broker_files(target, facts, {**context, **fragment_context(target, broker,
                                                                                                   password)},
                                                     templates)
    except TemplateError as exc:
        return fail(StepName.BROKER, str(exc))
    if target.in_cluster and not cookie:
        return fail(StepName.BROKER,
                    "a node of a RabbitMQ cluster needs the cluster's Erlang cookie, and none was given")
    role = formation(target.inventory, target.host, facts) if target.in_cluster else "seed"
    resources = broker_resources(target, password, rendered_fragment, node_files, cookie, role)
    what = target.broker.name
    if target.in_cluster:
        what += (f" configured, enabled and running; {rabbit_node(target.host)} "
                 + ("seeds the cluster" if role == "seed" else "is a member of the cluster"))
    else:
        what += " configured, enabled and running"
    plan = plan_resources(StepName.BROKER, resources, facts, what)
    if not plan.changed:
        return plan
    service = next(r for r in resources if isinstance(r, BrokerService))
    return replace(plan, restarts_redis=target.broker.records_restart and service.restarts(facts))


def broker_files(target: Target, facts: Facts, context: dict,
                 templates: list[Path]) -> tuple[str, tuple[tuple[NodeFile, str], ...]]:
    """The broker's config fragment, and RabbitMQ's node files with their contents, rendered."""
    fragment = render(target.broker.fragment()[1], context, templates)
    node_files: tuple[tuple[NodeFile, str], ...] = ()
    if files := rabbitmq_node_files(target):
        node = {**context, **node_context(target.inventory, target.host, facts.hostname)}
        node_files = tuple((f, render(f.template, node, templates)) for f in files)
    return fragment, node_files


def broker_resources(target: Target, password: str | None, rendered_fragment: str,
                     node_files: tuple[tuple[NodeFile, str], ...], cookie: str | None, role: str) -> list:
    """The broker step's resources, in the order their changes run: the fleet's shared values
    kept, the config files, a cluster node's peers, the kind's config lines, the service, a
    joiner's join, the project's account."""
    kind = target.broker
    path, _, group, mode = kind.fragment()
    kept: list = []
    if password:
        # new (or given anew in the environment): kept on the broker host, read by later deploys
        kept.append(KeptSecret(password_file(target.inventory), password, "the broker password"))
    uploads = [Upload(path, rendered_fragment, "root", group, mode, secret=True, validate=kind.fragment_validator)]
    uploads += [Upload(spec.target, content, validate=spec.validate) for spec, content in node_files]
    peers = None
    if target.in_cluster:
        kept.append(KeptSecret(cookie_file(target.inventory), cookie, "the cluster's Erlang cookie"))
        # the node reads its cookie at start: a new one takes a restart (so does a joiner's first)
        uploads.append(Upload(RABBITMQ_COOKIE, cookie, "rabbitmq", "rabbitmq", "0400", secret=True, diff=False))
    files = BrokerFiles(tuple(uploads), kind.before_install(),
                        epmd=tuple(spec.target for spec, _ in node_files if spec.epmd))
    if target.in_cluster:
        peers = PeersReread(files, rabbit_node(target.host), kind.unit)
    lines = KindChanges(f"{kind.name}'s config lines", lambda facts: kind.config_actions(facts, bool(node_files))[0])
    resources = [*kept, files, *([peers] if peers else []), lines, BrokerService(kind, files, peers, bool(node_files))]
    if role == "join":
        seed = cluster_seed(target.inventory)
        join = Action(f"join the RabbitMQ cluster of {rabbit_node(seed)} as {rabbit_node(target.host)}",
                      join_script(target.host, seed))
        resources.append(KindChanges("the cluster's membership", lambda facts: [join]))
    resources.append(KindChanges("the project's account",
                                 lambda facts: kind.account_actions(facts, password, role)))
    return resources


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
