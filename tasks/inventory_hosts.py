"""The inventory's hosts, and what their roles must make together: one beat, a broker the
workers reach, a RabbitMQ cluster of an odd number of nodes, every pool placed somewhere."""

from __future__ import annotations

import ipaddress
from typing import Any

from .inventory import ADDRESS, HOST_NAME, ROLES, UNIX_NAME, HostSpec, Inventory, Pool
from .inventory_check import Checker, type_name
from .refusals import HOST_LIMIT, node_name_problem


def parse_hosts(check: Checker, raw: Any, pools: dict[str, Pool]) -> dict[str, HostSpec]:
    if raw is None or raw == {}:
        return {}   # no hosts: `fab -H` names SSH destinations, each with every role
    if not isinstance(raw, dict):
        check.problem("hosts", "must be a mapping of host names to their settings")
        return {}
    known = {"address": "", "user": "", "port": "", "internal_address": "", "roles": "", "pools": ""}
    hosts = {}
    for name, spec in raw.items():
        key = f"hosts.{name}"
        if isinstance(name, str) and len(name.encode()) > HOST_LIMIT[0]:
            check.problem(key, f"is {len(name.encode())} characters long; at most {HOST_LIMIT[0]}: {HOST_LIMIT[1]}",
                          shown=repr(f"hosts.{name[:60]}…"))
            continue
        if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
            check.problem(key, "is not a usable host name (letters, digits, '.', '-', '_')")
            continue
        spec = spec or {}
        if not isinstance(spec, dict):
            check.problem(key, f"must be a mapping, not {type_name(spec)}")
            continue
        check.unknown_keys(spec, key, known)
        roles = spec.get("roles", list(ROLES))
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            check.problem(f"{key}.roles", f"must be a non-empty list of roles from: {', '.join(ROLES)}")
            roles = []
        for role in roles:
            if role not in ROLES:
                check.problem(f"{key}.roles", f"has an unknown role {role!r} (roles: {', '.join(ROLES)})")
        hosts[name] = HostSpec(
            name=name,
            address=check.string(spec.get("address"), f"{key}.address", ADDRESS, "a host name or IP address"),
            user=check.string(spec.get("user"), f"{key}.user", UNIX_NAME, "a user name"),
            port=check.integer(spec.get("port"), f"{key}.port", 1, 65535, None),
            internal_address=check.string(
                spec.get("internal_address"), f"{key}.internal_address", ADDRESS, "a host name or IP address"
            ),
            roles=tuple(r for r in ROLES if r in roles),
            pools=_host_pools(check, spec, key, pools, "worker" in roles),
        )
    return hosts


def _host_pools(check: Checker, spec: dict, key: str, pools: dict[str, Pool], worker: bool) -> tuple[str, ...] | None:
    names = spec.get("pools")
    if names is None:
        return None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        check.problem(f"{key}.pools", f"must be a non-empty list of pool names from 'celery.pools' "
                                      f"({', '.join(pools)})")
        return None
    if not worker:
        check.problem(f"{key}.pools", "is set, but the host has no worker role (pools run on worker hosts)")
    for name in names:
        if name not in pools:
            check.problem(f"{key}.pools", f"names the pool {name!r}, which 'celery.pools' does not define "
                                          f"(pools: {', '.join(pools)})")
    if len(set(names)) != len(names):
        check.problem(f"{key}.pools", "names a pool twice")
    # in the order of celery.pools, so that moving a name in the list changes nothing
    return tuple(p for p in pools if p in names)



def topology_problems(inventory: Inventory) -> list[str]:
    """Roles that cannot make a working cluster."""
    hosts = inventory.hosts.values()
    problems = []
    workers = [h.name for h in hosts if h.has("worker")]
    beats = [h.name for h in hosts if h.has("beat")]
    brokers = [h.name for h in hosts if h.has("broker")]
    if workers and len(beats) != 1:
        which = "none has it" if not beats else f"{', '.join(beats)} all have it"
        problems.append(
            f"'hosts' must give the role beat to exactly one host (celery beat runs once per fleet); {which}"
        )
    if len(brokers) > 1:
        problems += _cluster_problems(inventory, brokers)
    if workers and not brokers and not inventory.broker.url:
        problems.append("'hosts' has workers but no host with the role broker, and 'broker.url' is not set")
    if workers:
        placed = {p for h in hosts if h.has("worker") for p in (inventory.celery.pools if h.pools is None else h.pools)}
        consumed = {q for name in placed for q in inventory.celery.pools[name].queues}
        for name, pool in inventory.celery.pools.items():
            orphaned = [q for q in pool.queues if q not in consumed]
            if name not in placed and orphaned:
                problems.append(
                    f"'celery.pools.{name}' runs on no host (no worker host lists it in 'pools'), and no other pool "
                    f"consumes its queue{'s' if len(orphaned) > 1 else ''} {', '.join(orphaned)}: tasks sent there "
                    "would wait forever"
                )
    if brokers and inventory.broker.url:
        problems.append(f"'broker.url' is set, so no host may have the role broker (has it: {brokers[0]})")
    if len(list(hosts)) > 1 and brokers and workers and len(brokers) == 1:
        broker = inventory.hosts[brokers[0]]
        remote_workers = [w for w in workers if w != broker.name]
        if remote_workers and not broker.internal_address:
            problems.append(
                f"'hosts.{broker.name}.internal_address' is missing: workers on "
                f"{', '.join(remote_workers)} need the address where they reach the broker"
            )
        elif remote_workers and not is_ip(broker.internal_address):
            problems.append(
                f"'hosts.{broker.name}.internal_address' must be an IP address (the broker listens on it); "
                f"got {broker.internal_address!r}"
            )
    return problems


def _cluster_problems(inventory: Inventory, brokers: list[str]) -> list[str]:
    """Several broker hosts: a RabbitMQ cluster of an odd number of nodes, at least 3, each with
    an internal_address (an IP address) and a node name (rabbit@NAME, NAME the host's name up
    to its first dot) of its own."""
    which = ", ".join(brokers)
    if inventory.broker.url:
        return []   # reported below: broker.url and broker hosts exclude each other
    if inventory.broker.kind != "rabbitmq":
        return [f"'hosts' gives the role broker to {which}; Redis has one broker host per fleet (fabcelery "
                "does not set up Redis Sentinel or Redis Cluster): give the role broker to one host, or use "
                "'broker.kind: rabbitmq' for a cluster of 3 or 5 broker hosts"]
    problems = []
    if len(brokers) % 2 == 0:
        why = ("a two-node cluster's quorum queues cannot survive the loss of either node"
               if len(brokers) == 2 else "an even number of nodes survives no more failures than one node fewer")
        problems.append(f"'hosts' gives the role broker to {len(brokers)} hosts ({which}); a RabbitMQ cluster needs "
                        f"an odd number of them, at least 3 ({why})")
    for name in brokers:
        address = inventory.hosts[name].internal_address
        if not address:
            problems.append(f"'hosts.{name}.internal_address' is missing: the nodes of a RabbitMQ cluster reach "
                            "each other, and the workers reach them, at that address")
        elif not is_ip(address):
            problems.append(f"'hosts.{name}.internal_address' must be an IP address (the node listens on it); "
                            f"got {address!r}")
    for name in brokers:
        long_node = node_name_problem(name)
        if long_node:
            problems.append(f"'hosts.{name[:60]}…' {long_node}")
    short = {}
    for name in brokers:
        short.setdefault(name.split(".")[0], []).append(name)
    for node, names in short.items():
        if len(names) > 1:
            problems.append(f"'hosts' {', '.join(names)} would all be the RabbitMQ node rabbit@{node} (a node is "
                            "named after its host up to the first dot); give them names that differ there")
    return problems


def is_ip(value: str | None) -> bool:
    try:
        ipaddress.ip_address(value or "")
        return True
    except ValueError:
        return False
