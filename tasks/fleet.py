"""A deploy across the fleet: the broker password first, then the broker host, then
the other hosts concurrently (they need the broker configured before they verify)."""

from __future__ import annotations

import os

from fabric import Config

from .broker import broker_for, needs_password, new_password, password_script
from .deploy import deploy_host
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
    remote = Remote(broker, config, accept_new_host_keys)
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


def deploy_fleet(inventory: Inventory, hosts: list[HostSpec], config: Config, reporter: Reporter,
                 dry_run: bool, accept_new_host_keys: bool, parallel: int) -> list[HostResult]:
    by_name = {h.name: h for h in hosts}
    passwords: dict[str, str | None] = {}
    failed_brokers: dict[str, str] = {}

    # Each broker host (normally one) and its password; a broker not in this run is only read.
    brokers = {b.name: b for h in hosts if (b := broker_for(inventory, h)) is not None}
    for name, broker in brokers.items():
        if not needs_password(inventory, broker):
            passwords[name] = None
            continue
        try:
            passwords[name] = resolve_password(inventory, broker, config, accept_new_host_keys, reporter)
        except HostError as exc:
            failed_brokers[name] = str(exc)
    secrets = tuple(p for p in passwords.values() if p)
    reporter.secrets = reporter.secrets + secrets

    def work(name: str) -> HostResult:
        host = by_name[name]
        broker = broker_for(inventory, host)
        if broker is not None and broker.name in failed_brokers:
            reporter.line(name, f"{'connect':<12} failed: broker host {broker.name}: {failed_brokers[broker.name]}")
            return HostResult(host=name, failed=1, error=f"broker host {broker.name} unreachable")
        remote = Remote(host, config, accept_new_host_keys, secrets=reporter.secrets)
        password = passwords.get(broker.name) if broker is not None else os.environ.get(inventory.broker.password_env)
        return deploy_host(inventory, host, remote, reporter, dry_run=dry_run, password=password)

    # The broker hosts first: the workers' verify needs a configured broker.
    first = [h.name for h in hosts if h.has("broker")]
    rest = [h.name for h in hosts if not h.has("broker")]
    results = {r.host: r for r in run_hosts(first, work, parallel)} if first else {}
    failed_here = [n for n in first if results[n].failed]
    if failed_here and not dry_run:
        for name in rest:
            reporter.line(name, f"{'deploy':<12} skipped: the broker host {', '.join(failed_here)} failed")
            results[name] = HostResult(host=name, failed=1, error=f"skipped: broker host {failed_here[0]} failed")
    elif rest:
        results.update({r.host: r for r in run_hosts(rest, work, parallel)})
    return [results[h.name] for h in hosts]
