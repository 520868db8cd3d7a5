"""A deploy across the fleet, as ordered host groups and named shared values.

The fleet runs in two groups, in this order: the broker hosts (a RabbitMQ cluster's nodes in
inventory order, its seed first), then every other host. All of them connect and probe at
once; what orders them is what each waits for:

- **Shared values** (`SharedValue`): the broker password, and on a cluster the Erlang cookie.
  The broker hosts keep them; they are decided once, together, when every broker host of
  the run has been probed (or has failed): from the environment, else the first broker host
  in inventory order that keeps one, else new. A broker host outside the run is read first
  (one command). Every host is given the values by name.
- **Waits**: a host that uses a broker host of the run applies its changes only once that
  host is done (its verify needs a configured broker); a cluster node joins once the seed's
  broker step is done; no celery program starts before every node's broker step is done (a
  quorum queue gets its members when it is declared). A host whose broker host failed is
  left untouched.

Broker hosts never wait for the other group, and they are first in the queue, so a smaller
--parallel cannot deadlock.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from dataclasses import dataclass

from fabric import Config

from .apply import SkipHost, deploy_host
from .broker_host import broker_for, needs_password, new_password, password_file
from .deploy import deploy_job
from .host_errors import HostError
from .interrupt import check as check_interrupt
from .inventory import HostSpec, Inventory
from .plan import StepName
from .probe import Facts
from .rabbitmq_broker import rabbitmq_account
from .rabbitmq_cluster import cluster_hosts, cookie_file, in_cluster, queue_problems, version_problems
from .remote import Remote
from .report import HostResult, Reporter, run_hosts
from .rolling import too_many_failed
from .shell import cmd
from .target import Target


@dataclass(frozen=True)
class SharedValue:
    """A value every host of the fleet is given under `key`, which the broker hosts keep in
    `path` (0600 root) and `env` may set."""

    key: str
    env: str
    path: str


def shared_values(inventory: Inventory) -> list[SharedValue]:
    brokers = inventory.broker_hosts()
    values = []
    if brokers and needs_password(inventory, brokers[0]):
        values.append(SharedValue("password", inventory.broker.password_env, password_file(inventory)))
    if cluster_hosts(inventory):
        values.append(SharedValue("cookie", inventory.broker.cookie_env, cookie_file(inventory)))
    return values


def read_kept(inventory: Inventory, host: HostSpec, config: Config, accept_new_host_keys: bool) -> dict:
    """What a broker host outside this run keeps (each shared value by key) and, on a cluster,
    its RabbitMQ version: one command; the secrets travel on our captured stdout only, base64
    per line."""
    values = shared_values(inventory)
    lines = [f"for f in {' '.join(cmd(v.path) for v in values)}; do",
             '  if [ -s "$f" ]; then base64 -w0 < "$f"; fi; echo',
             "done"]
    keys = [v.key for v in values]
    if in_cluster(inventory, host):
        lines.append("dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null | base64 -w0; echo")
        keys.append("version")
    remote = Remote(host, config, accept_new_host_keys, bounds=inventory.bounds)
    try:
        remote.open()
        output = remote.run_root("\n".join(lines), "read the broker's shared values").stdout.splitlines()
    finally:
        remote.close()
    kept = {}
    for key, line in zip(keys, output + [""] * len(keys), strict=False):
        try:
            kept[key] = base64.b64decode(line.strip()).decode().strip() if line.strip() else ""
        except (binascii.Error, UnicodeDecodeError):
            kept[key] = ""
    return kept


class BrokerGroup:
    """The broker hosts (members, in inventory order), what they decide together and what the
    other hosts wait for from them. `outside`: what the members not in this run keep;
    `unreachable`: why the ones that could not be read could not."""

    def __init__(self, inventory: Inventory, reporter: Reporter, in_run: list[str],
                 outside: dict[str, dict], unreachable: dict[str, str]):
        self.inventory = inventory
        self.reporter = reporter
        self.members = [h.name for h in inventory.broker_hosts()]
        self.in_run = [n for n in self.members if n in in_run]
        self.outside = outside
        self.unreachable = unreachable
        self.cluster = bool(cluster_hosts(inventory))
        self.facts: dict[str, Facts | None] = {}
        self.lock = threading.Lock()
        self.decided = threading.Event()
        self.values: dict[str, str | None] = {}
        self.new: dict[str, bool] = {}
        self.problem = ""
        self.accepted: set[str] = set()          # members that were probed and may go on (once decided)
        self.broker_done = {n: threading.Event() for n in self.in_run}
        self.done = {n: threading.Event() for n in self.in_run}
        self.failed: dict[str, bool] = {}        # failed at any point: its users are skipped
        self.broker_failed: dict[str, bool] = {}  # failed before its broker step was done
        if not self.in_run:
            self._decide()
            self.decided.set()

    # --- deciding ---------------------------------------------------------------------------

    def report(self, name: str, facts: Facts | None) -> None:
        """A member was probed (facts) or failed before that (None); the last one decides."""
        with self.lock:
            if name in self.facts:
                return
            self.facts[name] = facts
            if len(self.facts) < len(self.in_run):
                return
        self._decide()
        self.decided.set()

    def _decide(self) -> None:
        probed = {n: f for n in self.members if (f := self.facts.get(n)) is not None}
        if self.cluster:
            versions = dict(probed)
            for name, kept in self.outside.items():
                if kept.get("version"):
                    versions[name] = Facts(packages={"rabbitmq-server": True},
                                           versions={"rabbitmq-server": kept["version"]})
            vhost = rabbitmq_account(self.inventory)[1]
            self.problem = "; ".join(version_problems(self.inventory, versions)
                                     + queue_problems(self.inventory, probed, vhost))
        for value in shared_values(self.inventory):
            self.values[value.key] = self._shared(value, probed)
        self.reporter.add_secrets(*self.values.values())
        # before `decided` is set: a host that waits for it reads this at once
        self.accepted = set() if self.problem else set(probed)

    def _shared(self, value: SharedValue, probed: dict[str, Facts]) -> str:
        if os.environ.get(value.env):
            self.new[value.key] = False
            return os.environ[value.env]
        for name in self.members:
            kept = ((probed[name].contents.get(value.path) or "") if name in probed
                    else self.outside.get(name, {}).get(value.key, "")).strip()
            if kept:
                self.new[value.key] = False
                return kept
        self.new[value.key] = True
        if self.problem:
            return new_password()
        teller = next((n for n in self.in_run if n in probed), None) if self.in_run else self.members[0]
        if teller is None:
            return new_password()        # no broker host of the run was probed: nobody uses it
        where = ("on a node: a new one will be kept on every node" if len(self.members) > 1
                 else "on the host: a new one will be kept there")
        self.reporter.line(teller, f"{'broker':<12} no {value.key} in ${value.env} or {where}")
        return new_password()

    # --- what a member waits for ----------------------------------------------------------

    def member_values(self, name: str, facts: Facts) -> dict[str, str | None]:
        self.report(name, facts)
        self.decided.wait()
        if self.problem:
            raise SkipHost(f"{self.problem}; nothing was changed on any node")
        return dict(self.values)

    def before_member_step(self, host: HostSpec, step: str, has_programs: bool) -> None:
        if step in (StepName.CONFIGS, StepName.SUPERVISORD, StepName.VERIFY):
            self.broker_done[host.name].set()
        seed = self.in_run[0] if self.cluster and self.members[0] in self.in_run else None
        if step == StepName.BROKER and seed is not None and host.name != seed:
            self.broker_done[seed].wait()
            if self.broker_failed.get(seed):
                raise SkipHost(f"the cluster's seed {seed} failed, so this node cannot join it")
        self.before_programs(step, has_programs)

    def member_finished(self, name: str, failed: bool) -> None:
        self.report(name, None)          # never probed: the others decide without it
        self.failed[name] = failed or name not in self.accepted
        if not self.broker_done[name].is_set():
            self.broker_failed[name] = self.failed[name]
            self.broker_done[name].set()
        self.done[name].set()

    # --- what the other hosts wait for ------------------------------------------------------

    def user_values(self, broker: str) -> dict[str, str | None]:
        self.decided.wait()
        if broker in self.done and broker not in self.accepted:
            raise SkipHost(f"the broker host {broker} failed")
        return {"password": self.values.get("password")}      # the cookie is the nodes' alone

    def before_user_apply(self, broker: str) -> None:
        if broker in self.done:
            self.done[broker].wait()
            if self.failed.get(broker):
                raise SkipHost(f"the broker host {broker} failed")
        check_interrupt()       # the broker host stopped at Ctrl-C: so does this one

    def before_programs(self, step: str, has_programs: bool) -> None:
        """No celery program starts before every node's broker step is done (a cluster's quorum
        queues get their members when they are declared)."""
        if self.cluster and step == StepName.SUPERVISORD and has_programs:
            for event in self.broker_done.values():
                event.wait()


class Place:
    """One host's place in the fleet, as deploy_host uses it: its shared values once its
    probe answered, and what it waits for before applying and before each step (SkipHost:
    the host is left as it is)."""

    def __init__(self, host: HostSpec, group: BrokerGroup | None, broker: HostSpec | None,
                 from_env: str | None, dry_run: bool):
        self.host = host
        self.group = group
        self.member = group is not None and host.name in group.done
        self.broker = broker.name if broker is not None else None
        self.from_env = from_env
        self.dry_run = dry_run
        self.has_programs = host.has("worker") or host.has("beat")

    def values(self, facts: Facts) -> dict[str, str | None]:
        if self.group is None:
            return {"password": self.from_env}
        if self.member:
            return self.group.member_values(self.host.name, facts)
        return self.group.user_values(self.broker)

    def before_apply(self) -> None:
        if self.group is not None and not self.member and not self.dry_run:
            self.group.before_user_apply(self.broker)

    def before_step(self, step: str) -> None:
        if self.group is None:
            return
        if self.member:
            self.group.before_member_step(self.host, step, self.has_programs)
        else:
            self.group.before_programs(step, self.has_programs)

    def finished(self, failed: bool) -> None:
        if self.member:
            self.group.member_finished(self.host.name, failed)


class FailBound:
    """`--max-fail PERCENT` for a deploy: once the hosts that failed after they were reached are
    more than that share of the fleet (0: the first), no further host is started; the hosts
    under way finish. None: no bound (every host is deployed, whatever the others do)."""

    def __init__(self, hosts: int, max_fail: int | None):
        self.hosts = hosts
        self.max_fail = max_fail
        self.failed = 0
        self.halted = ""          # the host whose failure stopped the deploy
        self.lock = threading.Lock()

    def count(self, name: str, failed: bool) -> None:
        if not failed or self.max_fail is None:
            return
        with self.lock:
            self.failed += 1
            if not self.halted and too_many_failed(self.failed, self.hosts, self.max_fail):
                self.halted = name

    def why(self) -> str:
        more = (f" ({self.failed} of {self.hosts} hosts failed, more than --max-fail {self.max_fail}%)"
                if self.max_fail else "")
        return f"{self.halted} failed{more}, so the deploy stopped"


def deploy_fleet(inventory: Inventory, hosts: list[HostSpec], config: Config, reporter: Reporter,
                 dry_run: bool, accept_new_host_keys: bool, parallel: int,
                 max_fail: int | None = None) -> list[HostResult]:
    """Every host at once, ordered by what each waits for (see the module's docstring);
    `max_fail`: see FailBound."""
    by_name = {h.name: h for h in hosts}
    bound = FailBound(len(hosts), max_fail)
    from_env = os.environ.get(inventory.broker.password_env)
    reporter.add_secrets(from_env)
    used = {b.name for h in hosts if (b := broker_for(inventory, h)) is not None}
    group = None
    if used or any(h.has("broker") for h in hosts):
        cluster = bool(cluster_hosts(inventory))
        outside, unreachable = {}, {}
        # outside the run: a cluster's every node when one is in the run (they decide together),
        # else only the broker host that hosts of the run use
        whole = cluster and any(h.name in by_name for h in inventory.broker_hosts())
        # what the environment gives need not be read (no connection): a broker host only
        # used is read only for a value the environment does not give
        given = all(os.environ.get(v.env) for v in shared_values(inventory) if v.key == "password")
        for member in inventory.broker_hosts():
            if member.name in by_name or not (whole or (member.name in used and not given)):
                continue
            try:
                outside[member.name] = read_kept(inventory, member, config, accept_new_host_keys)
            except HostError as exc:
                unreachable[member.name] = str(exc)
                if whole:
                    reporter.line(member.name, f"{'broker':<12} cannot read what this node keeps: {exc}")
        reporter.add_secrets(*(v for kept in outside.values() for k, v in kept.items() if k != "version"))
        group = BrokerGroup(inventory, reporter, list(by_name), outside, unreachable)
        if cluster:
            # the nodes decide together and wait for each other: all of them run at once
            parallel = max(parallel, len(group.in_run))

    def work(name: str) -> HostResult:
        host = by_name[name]
        broker = broker_for(inventory, host)
        if group is not None and broker is not None and broker.name in group.unreachable:
            reporter.line(name, f"{'connect':<12} failed: broker host {broker.name}: {group.unreachable[broker.name]}")
            return HostResult(host=name, failed=1, error=f"broker host {broker.name} unreachable")
        place = Place(host, group if broker is not None else None, broker, from_env, dry_run)
        if bound.halted:
            reporter.line(name, f"{'deploy':<12} skipped: {bound.why()} (this host was not touched)")
            place.finished(True)       # a broker host not deployed: the hosts that use it are not either
            return HostResult(host=name, error=f"not deployed: {bound.halted} failed first")
        remote = Remote(host, config, accept_new_host_keys, secrets=reporter.secrets, bounds=inventory.bounds)
        result = None
        try:
            target = Target.of(inventory, host)
            result = deploy_host(target, remote, reporter, deploy_job(target), dry_run=dry_run, place=place)
            return result
        finally:
            failed = result is None or bool(result.failed)
            place.finished(failed)
            # a host that could not be reached is passed over, as by a rolling restart: nothing ran there
            bound.count(name, failed and remote.reached)

    # the first group first in the queue: broker hosts never wait for the others
    brokers = [h.name for h in hosts if h.has("broker")]
    order = brokers + [h.name for h in hosts if h.name not in brokers]
    results = {r.host: r for r in run_hosts(order, work, parallel)}
    return [results[h.name] for h in hosts]


def undeploy_fleet(inventory: Inventory, hosts: list[HostSpec], config: Config, reporter: Reporter,
                   dry_run: bool, accept_new_host_keys: bool, parallel: int, purge: bool) -> list[HostResult]:
    """The deploy's groups in reverse order: the hosts whose programs use a broker first (their
    programs stopped), then the broker hosts (the account those programs used goes last)."""
    from .undeploy import undeploy_job

    def work(name: str) -> HostResult:
        host = by_name[name]
        target = Target.of(inventory, host)
        remote = Remote(host, config, accept_new_host_keys, secrets=reporter.secrets, bounds=inventory.bounds)
        return deploy_host(target, remote, reporter, undeploy_job(target, purge), dry_run=dry_run)

    by_name = {h.name: h for h in hosts}
    brokers = [h.name for h in hosts if h.has("broker")]
    first = [h.name for h in hosts if h.name not in brokers]
    results = {r.host: r for r in run_hosts(first, work, parallel)}
    check_interrupt()
    results.update({r.host: r for r in run_hosts(brokers, work, parallel)})
    return [results[h.name] for h in hosts if h.name in results]
