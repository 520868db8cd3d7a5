"""A deploy across the fleet: every host at once, each waiting for what it needs from the
broker host (its password, its changes applied) only when it needs it."""

from __future__ import annotations

import base64
import binascii
import os
import threading

from fabric import Config

from .broker import (
    broker_for,
    cluster_hosts,
    cluster_seed,
    cookie_file,
    needs_password,
    new_password,
    password_file,
    password_script,
    version_problems,
)
from .deploy import SkipHost, deploy_host
from .interrupt import check as check_interrupt
from .inventory import HostSpec, Inventory
from .probe import Facts
from .remote import HostError, Remote
from .report import HostResult, Reporter, run_hosts
from .shell import cmd


def resolve_password(inventory: Inventory, broker: HostSpec, config: Config, accept_new_host_keys: bool,
                     reporter: Reporter) -> str:
    """The fleet's broker password: from the environment, kept on the broker host, or new.

    A new one is stored on the broker host by its broker step, and read back by later
    deploys, so a second deploy changes nothing.
    """
    from_env = os.environ.get(inventory.broker.password_env)
    if from_env:
        return from_env
    remote = Remote(broker, config, accept_new_host_keys, bounds=inventory.bounds)
    try:
        remote.open()
        kept = remote.run_root(password_script(inventory), "read the broker password").stdout.strip()
    finally:
        remote.close()
    if kept:
        return kept
    reporter.line(broker.name, f"{'broker':<12} no password in ${inventory.broker.password_env} or on the host: "
                               "a new one will be kept there")
    return new_password()


class BrokerGate:
    """What the hosts of a broker wait for from the broker host's own deploy, which runs
    beside theirs: its password (known once it is probed) and its changes applied (their
    verify needs a configured broker)."""

    def __init__(self) -> None:
        self.password: str | None = None
        self.probed = False                    # the password is known (or none is needed)
        self.password_known = threading.Event()   # set once probed, or once the broker host gave up
        self.done = threading.Event()
        self.failed = ""


class ClusterGate:
    """The nodes of a RabbitMQ cluster in this run, which decide together once each has been
    probed (or has failed): the shared values, the fleet's password and the Erlang cookie (from
    the environment, else the first node in inventory order that keeps one, else new), and
    whether they may go on at all (one RabbitMQ version: version_problems). Then each node
    joins the seed once the seed's broker step is done, and no celery program starts before
    every node's broker step is done (a quorum queue gets its members when it is declared)."""

    def __init__(self, inventory: Inventory, in_run: list[str], outside: dict[str, dict]):
        self.inventory = inventory
        self.nodes = [h.name for h in cluster_hosts(inventory)]
        self.in_run = [n for n in self.nodes if n in in_run]
        self.outside = outside                       # nodes not in this run: what they keep
        self.facts: dict[str, Facts | None] = {}
        self.lock = threading.Lock()
        self.decided = threading.Event()
        self.password: str | None = None
        self.cookie: str | None = None
        self.problem = ""
        self.new = {"password": False, "cookie": False}
        self.broker_done = {n: threading.Event() for n in self.in_run}
        self.broker_failed: dict[str, bool] = {}

    def report(self, name: str, facts: Facts | None) -> None:
        with self.lock:
            if name in self.facts:
                return
            self.facts[name] = facts
            if len(self.facts) < len(self.in_run):
                return
        self._decide()
        self.decided.set()

    def _decide(self) -> None:
        inventory = self.inventory
        probed = {n: f for n in self.nodes if (f := self.facts.get(n)) is not None}
        versions = dict(probed)
        for name, kept in self.outside.items():
            if kept.get("version"):
                versions[name] = Facts(packages={"rabbitmq-server": True},
                                       versions={"rabbitmq-server": kept["version"]})
        self.problem = "; ".join(version_problems(inventory, versions))

        def shared(env: str, path: str, key: str) -> str:
            if os.environ.get(env):
                return os.environ[env]
            for name in self.nodes:
                kept = ((probed[name].contents.get(path) or "") if name in probed
                        else self.outside.get(name, {}).get(key, "")).strip()
                if kept:
                    return kept
            self.new[key] = True
            return new_password()

        self.password = shared(inventory.broker.password_env, password_file(inventory), "password")
        self.cookie = shared(inventory.broker.cookie_env, cookie_file(inventory), "cookie")

    def before_step(self, host: HostSpec, step: str, has_programs: bool) -> None:
        seed = cluster_seed(self.inventory)
        if host.name in self.broker_done and step in ("configs", "supervisord", "verify"):
            self.broker_done[host.name].set()
        if step == "broker" and seed is not None and host.name != seed.name and seed.name in self.broker_done:
            self.broker_done[seed.name].wait()
            if self.broker_failed.get(seed.name):
                raise SkipHost(f"the cluster's seed {seed.name} failed, so this node cannot join it")
        if step == "supervisord" and has_programs:
            for event in self.broker_done.values():
                event.wait()

    def finished(self, name: str, failed: bool) -> None:
        if name in self.broker_done and not self.broker_done[name].is_set():
            self.broker_failed[name] = failed
            self.broker_done[name].set()


def read_kept(inventory: Inventory, node: HostSpec, config: Config, accept_new_host_keys: bool) -> dict:
    """What a cluster node outside this run keeps (password, cookie) and its RabbitMQ version:
    one command; the secrets travel on our captured stdout only, base64 per line."""
    script = "\n".join([
        f"for f in {cmd(password_file(inventory))} {cmd(cookie_file(inventory))}; do",
        '  if [ -s "$f" ]; then base64 -w0 < "$f"; fi; echo',
        "done",
        "dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null | base64 -w0; echo",
    ])
    remote = Remote(node, config, accept_new_host_keys)
    try:
        remote.open()
        lines = remote.run_root(script, "read the cluster's shared values").stdout.splitlines()
    finally:
        remote.close()
    values = []
    for line in (lines + ["", "", ""])[:3]:
        try:
            values.append(base64.b64decode(line.strip()).decode() if line.strip() else "")
        except (binascii.Error, UnicodeDecodeError):
            values.append("")
    return dict(zip(("password", "cookie", "version"), values, strict=True))


def deploy_fleet(inventory: Inventory, hosts: list[HostSpec], config: Config, reporter: Reporter,
                 dry_run: bool, accept_new_host_keys: bool, parallel: int) -> list[HostResult]:
    """Every host at once: all connect and probe together; a host that uses a broker host of
    this run applies its changes only after that host applied its own (at once when it had
    none). The broker host is started first, and never waits, so a smaller --parallel cannot
    deadlock."""
    by_name = {h.name: h for h in hosts}
    from_env = os.environ.get(inventory.broker.password_env)
    gates = {h.name: BrokerGate() for h in hosts if h.has("broker")}
    cluster = None
    if (nodes := cluster_hosts(inventory)) and any(n.name in by_name for n in nodes):
        outside = {}
        for node in nodes:
            if node.name not in by_name:
                try:
                    outside[node.name] = read_kept(inventory, node, config, accept_new_host_keys)
                except HostError as exc:
                    reporter.line(node.name, f"{'broker':<12} cannot read what this node keeps: {exc}")
        reporter.add_secrets(*(v for kept in outside.values() for k, v in kept.items() if k != "version"))
        cluster = ClusterGate(inventory, list(by_name), outside)
        # the nodes decide together and wait for each other: all of them run at once
        parallel = max(parallel, len(cluster.in_run))
    passwords: dict[str, str | None] = {}      # brokers outside this run: read before the others start
    failed_brokers: dict[str, str] = {}
    for broker in {b.name: b for h in hosts if (b := broker_for(inventory, h)) is not None}.values():
        if broker.name in gates:
            continue
        if not needs_password(inventory, broker):
            passwords[broker.name] = None
            continue
        try:
            passwords[broker.name] = resolve_password(inventory, broker, config, accept_new_host_keys, reporter)
        except HostError as exc:
            failed_brokers[broker.name] = str(exc)
    reporter.add_secrets(from_env, *passwords.values())

    def broker_password(host: HostSpec, facts) -> str | None:
        """On the broker host: the environment's password, else the one kept there, else a new one."""
        gate = gates[host.name]
        if cluster is not None and host.name in cluster.broker_done:
            cluster.report(host.name, facts)
            cluster.decided.wait()
            reporter.add_secrets(cluster.password, cluster.cookie)
            if cluster.problem:
                raise SkipHost(f"{cluster.problem}; nothing was changed on any node")
            for key, env in (("password", inventory.broker.password_env), ("cookie", inventory.broker.cookie_env)):
                if cluster.new[key] and host.name == cluster.in_run[0]:
                    reporter.line(host.name, f"{'broker':<12} no {key} in ${env} or on a node: a new one will be "
                                             "kept on every node")
            gate.password = cluster.password
        elif needs_password(inventory, host):
            kept = (facts.contents.get(password_file(inventory)) or "").strip()
            gate.password = from_env or kept or new_password()
            reporter.add_secrets(gate.password)
            if not from_env and not kept:
                reporter.line(host.name, f"{'broker':<12} no password in ${inventory.broker.password_env} or on the "
                                         "host: a new one will be kept there")
        gate.probed = True
        gate.password_known.set()
        return gate.password

    def work(name: str) -> HostResult:
        host = by_name[name]
        remote = Remote(host, config, accept_new_host_keys, secrets=reporter.secrets, bounds=inventory.bounds)
        node = cluster is not None and name in cluster.broker_done
        hooks = {}
        if cluster is not None:
            programs = host.has("worker") or host.has("beat")
            hooks["before_step"] = lambda step: cluster.before_step(host, step, programs)
        if node:
            hooks["cookie_from"] = lambda: cluster.cookie
        if name in gates:
            gate = gates[name]
            result = None
            try:
                result = deploy_host(inventory, host, remote, reporter, dry_run=dry_run,
                                     password_from=lambda facts: broker_password(host, facts), **hooks)
                gate.failed = result.error if result.failed else ""
                return result
            finally:
                gate.failed = gate.failed or ("" if gate.probed else "it could not be probed")
                gate.password_known.set()
                gate.done.set()
                if node:
                    cluster.report(name, None)      # never probed: the others decide without it
                    cluster.finished(name, result is None or bool(result.failed))
        broker = broker_for(inventory, host)
        if broker is not None and broker.name in failed_brokers:
            reporter.line(name, f"{'connect':<12} failed: broker host {broker.name}: {failed_brokers[broker.name]}")
            return HostResult(host=name, failed=1, error=f"broker host {broker.name} unreachable")
        gate = gates.get(broker.name) if broker is not None else None
        if gate is None:
            password = passwords.get(broker.name) if broker is not None else from_env
            return deploy_host(inventory, host, remote, reporter, dry_run=dry_run, password=password, **hooks)

        def password_from(_facts) -> str | None:
            gate.password_known.wait()
            if not gate.probed:
                raise SkipHost(f"the broker host {broker.name} failed")
            remote.secrets = reporter.secrets
            return gate.password

        def before_apply() -> None:
            if dry_run:
                return
            gate.done.wait()
            if gate.failed:
                raise SkipHost(f"the broker host {broker.name} failed")
            check_interrupt()       # the broker host stopped at Ctrl-C: so does this one

        return deploy_host(inventory, host, remote, reporter, dry_run=dry_run, password_from=password_from,
                           before_apply=before_apply, **hooks)

    # broker hosts first in the queue (a cluster's in inventory order, its seed first): they
    # never wait for other hosts, so they always get a place
    order = [h.name for h in hosts if h.name in gates] + [h.name for h in hosts if h.name not in gates]
    results = {r.host: r for r in run_hosts(order, work, parallel)}
    return [results[h.name] for h in hosts]


def undeploy_fleet(inventory: Inventory, hosts: list[HostSpec], config: Config, reporter: Reporter,
                   dry_run: bool, accept_new_host_keys: bool, parallel: int, purge: bool) -> list[HostResult]:
    """The deploy's order reversed: the hosts whose programs use a broker first (their
    programs stopped), then the broker hosts (the account those programs used goes last)."""
    from .undeploy import plan_undeploy, undeploy_spec

    def work(name: str) -> HostResult:
        host = by_name[name]
        remote = Remote(host, config, accept_new_host_keys, secrets=reporter.secrets, bounds=inventory.bounds)
        return deploy_host(inventory, host, remote, reporter, dry_run=dry_run, spec=undeploy_spec(inventory, host),
                           planner=lambda facts: plan_undeploy(inventory, host, facts, purge))

    by_name = {h.name: h for h in hosts}
    brokers = [h.name for h in hosts if h.has("broker")]
    first = [h.name for h in hosts if h.name not in brokers]
    results = {r.host: r for r in run_hosts(first, work, parallel)}
    check_interrupt()
    results.update({r.host: r for r in run_hosts(brokers, work, parallel)})
    return [results[h.name] for h in hosts if h.name in results]
