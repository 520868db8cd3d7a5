"""A deploy across the fleet: every host at once, each waiting for what it needs from the
broker host (its password, its changes applied) only when it needs it."""

from __future__ import annotations

import os
import threading

from fabric import Config

from .broker import broker_for, needs_password, new_password, password_file, password_script
from .deploy import SkipHost, deploy_host
from .interrupt import check as check_interrupt
from .inventory import HostSpec, Inventory
from .remote import HostError, Remote
from .report import HostResult, Reporter, run_hosts


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


def deploy_fleet(inventory: Inventory, hosts: list[HostSpec], config: Config, reporter: Reporter,
                 dry_run: bool, accept_new_host_keys: bool, parallel: int) -> list[HostResult]:
    """Every host at once: all connect and probe together; a host that uses a broker host of
    this run applies its changes only after that host applied its own (at once when it had
    none). The broker host is started first, and never waits, so a smaller --parallel cannot
    deadlock."""
    by_name = {h.name: h for h in hosts}
    from_env = os.environ.get(inventory.broker.password_env)
    gates = {h.name: BrokerGate() for h in hosts if h.has("broker")}
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
        if needs_password(inventory, host):
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
        if name in gates:
            gate = gates[name]
            try:
                result = deploy_host(inventory, host, remote, reporter, dry_run=dry_run,
                                     password_from=lambda facts: broker_password(host, facts))
                gate.failed = result.error if result.failed else ""
                return result
            finally:
                gate.failed = gate.failed or ("" if gate.probed else "it could not be probed")
                gate.password_known.set()
                gate.done.set()
        broker = broker_for(inventory, host)
        if broker is not None and broker.name in failed_brokers:
            reporter.line(name, f"{'connect':<12} failed: broker host {broker.name}: {failed_brokers[broker.name]}")
            return HostResult(host=name, failed=1, error=f"broker host {broker.name} unreachable")
        gate = gates.get(broker.name) if broker is not None else None
        if gate is None:
            password = passwords.get(broker.name) if broker is not None else from_env
            return deploy_host(inventory, host, remote, reporter, dry_run=dry_run, password=password)

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
                           before_apply=before_apply)

    # broker hosts first in the queue: they never wait, so they always get a place
    order = [h.name for h in hosts if h.name in gates] + [h.name for h in hosts if h.name not in gates]
    results = {r.host: r for r in run_hosts(order, work, parallel)}
    return [results[h.name] for h in hosts]
