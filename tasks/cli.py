"""The tasks users run: `fab deploy`, `fab status` (see `fab --list`).

Each task runs once for all its hosts (tasks/executor.py): `-H a,b` names them,
no -H means every host of the inventory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from invoke import Collection, Exit, task

from .deploy import deploy_host
from .inventory import HostSpec, Inventory, InventoryError, inventory_path, load_inventory
from .layout import Layout
from .probe import ProbeSpec, parse_probe, probe_script
from .remote import HostError, Remote
from .report import DEFAULT_PARALLEL, HostResult, Reporter, run_hosts
from .supervisor import parse_status, programs_for

ROOT = Path(__file__).resolve().parent.parent


def _load(c) -> tuple[Inventory, list[HostSpec]]:
    try:
        inventory = load_inventory(inventory_path(ROOT))
    except InventoryError as exc:
        raise Exit(str(exc), code=2) from None
    names = c.config.get("fabcelery_hosts") or []
    hosts = inventory.select(names)
    if not hosts:
        raise Exit(f"{inventory.path}: 'hosts' names no host, and none was given with -H.", code=2)
    return inventory, hosts


def _secrets() -> tuple[str, ...]:
    return tuple(v for k, v in os.environ.items() if k.endswith("_PASSWORD") and v)


def _finish(results: list[HostResult], reporter: Reporter) -> None:
    reporter.recap(results)
    if any(r.failed for r in results):
        raise Exit(code=1)


@task(
    help={
        "dry-run": "show what would change, with a diff for every file; change nothing",
        "parallel": f"how many hosts at once (default {DEFAULT_PARALLEL})",
        "accept-new-host-keys": "record the host key of a server seen for the first time (never a changed key)",
    }
)
def deploy(c, dry_run=False, parallel=DEFAULT_PARALLEL, accept_new_host_keys=False):
    """Take the hosts to a running, supervised Celery cluster (idempotent)."""
    inventory, hosts = _load(c)
    reporter = Reporter(secrets=_secrets())
    reporter.set_hosts([h.name for h in hosts])
    by_name = {h.name: h for h in hosts}

    def work(name: str) -> HostResult:
        remote = Remote(by_name[name], c.config, accept_new_host_keys, secrets=reporter.secrets)
        return deploy_host(inventory, by_name[name], remote, reporter, dry_run=dry_run)

    if dry_run:
        reporter.plain("dry run: nothing will be changed")
    _finish(run_hosts(list(by_name), work, int(parallel)), reporter)


@task(help={"json": "print JSON instead of a table",
            "parallel": f"how many hosts at once (default {DEFAULT_PARALLEL})"})
def status(c, json_=False, parallel=DEFAULT_PARALLEL):
    """supervisord's programs (state, pid, uptime) and the broker's health, one table for all hosts."""
    inventory, hosts = _load(c)
    layout = Layout(inventory.project)
    by_name = {h.name: h for h in hosts}
    rows: dict[str, list[dict]] = {}

    def work(name: str) -> HostResult:
        host = by_name[name]
        result = HostResult(host=name)
        remote = Remote(host, c.config)
        try:
            remote.open()
            spec = ProbeSpec(
                supervisorctl=(f"{layout.venv_bin}/supervisorctl", layout.supervisord_conf),
                redis_ping=host.has("broker") and not inventory.broker.url and inventory.broker.kind == "redis",
            )
            facts = parse_probe(remote.run_root(probe_script(spec), "status").stdout)
        except HostError as exc:
            rows[name] = [{"host": name, "program": "-", "state": "UNREACHABLE", "pid": None, "uptime": "",
                           "detail": str(exc)}]
            result.failed, result.error = 1, str(exc)
            return result
        finally:
            remote.close()
        found = {p.name: p for p in parse_status(facts.supervisor_status)}
        host_rows = []
        for program in programs_for(host) or list(found):
            p = found.get(program)
            state = p.state if p else "MISSING"
            host_rows.append({"host": name, "program": program, "state": state, "pid": p.pid if p else None,
                              "uptime": p.uptime if p else "", "detail": "" if p else "supervisord not running"})
            if state == "RUNNING":
                result.ok += 1
            else:
                result.failed += 1
        if facts.redis_ping is not None or (host.has("broker") and not inventory.broker.url):
            healthy = facts.redis_ping == "PONG"
            host_rows.append({"host": name, "program": "redis-server", "state": "PONG" if healthy else "DOWN",
                              "pid": None, "uptime": "", "detail": "" if healthy else (facts.redis_ping or "")})
            result.ok += healthy
            result.failed += not healthy
        rows[name] = host_rows
        return result

    results = run_hosts(list(by_name), work, int(parallel))
    table = [row for name in by_name for row in rows.get(name, [])]
    if json_:
        print(json.dumps({"hosts": table, "ok": not any(r.failed for r in results)}, indent=2))
        if any(r.failed for r in results):
            raise Exit(code=1)
        return
    _print_table(table)
    if any(r.failed for r in results):
        raise Exit(code=1)


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "PROGRAM", "STATE", "PID", "UPTIME", "DETAIL"):
        table.add_column(column)
    for row in rows:
        state = row["state"]
        style = "green" if state in ("RUNNING", "PONG") else "red"
        table.add_row(row["host"], row["program"], f"[{style}]{state}[/{style}]", str(row["pid"] or "-"),
                      row["uptime"] or "-", row["detail"])
    Console(width=160, highlight=False).print(table)


ns = Collection(deploy, status)
