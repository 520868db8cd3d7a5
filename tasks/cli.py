"""The tasks users run (see `fab --list`): deploy, and the day-two operations.

Each task runs once for all its hosts (tasks/executor.py): `-H a,b` names them,
no -H means every host of the inventory. The hosts run concurrently (`--parallel`);
what runs on each host, and what its output means, is decided in tasks/operations.py and tasks/status.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from invoke import Collection, Exit

from .bounds import DEFAULT as DEFAULT_BOUNDS
from .bounds import MAX_BOUND
from .command_line import check_destinations, checked_command_line, task
from .day_two import on_hosts, rolling_restart, run_operation
from .executor import collection_executor, strict_command_line
from .interrupt import EXIT_STATUS as INTERRUPTED
from .interrupt import STOP
from .inventory import HostSpec, Inventory, InventoryError
from .inventory_load import inventory_path, load_inventory
from .operation import Operation, OperationResult
from .operations import (
    broker_restart_operation,
    check_lines,
    check_operation,
    logs_operation,
    ping_operation,
    restart_operation,
    shutdown_operation,
    start_operation,
    stop_operation,
)
from .queues import NOT_CONSUMED, mark_programs, queue_rows, queue_table, queues_ok
from .report import DEFAULT_PARALLEL, HostResult, Reporter
from .rolling import max_fail_share, rolling_size
from .status import (
    HostStatus,
    failed_status,
    fleet_ok,
    status_document,
    status_operation,
    status_table,
    unacked_total,
    unreachable,
    with_beat_check,
)
from .target import Target

INVENTORY_SETTING = "fabcelery_inventory"    # `fabcelery --inventory FILE` (tasks/main.py)

# paramiko logs a failed connection's traceback from its transport thread; with no
# logging configured, Python would print it to stderr. The failure itself reaches the
# user as one line (tasks.host_errors.HostError), so its log records go nowhere.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
strict_command_line()   # a bad flag or value: one line and exit status 2 (tasks/executor.py)
collection_executor()   # the collection's tasks.executor_class counts (ns.configure at the end)
checked_command_line()  # chosen short flags, misspelt tasks, --dry (tasks/command_line.py)
PARALLEL_HELP = f"how many hosts at once (default {DEFAULT_PARALLEL})"
STATUS_COUNTS = ("counting programs and the broker: ok = RUNNING or UP, failed = any other state, and each queue "
                 "NOT CONSUMED (on the broker host)")
CHECK_TIMEOUT = 30   # fab check --timeout (tasks/check.py)
POOL_HELP = "only this worker pool (a name from celery.pools; the default pool is celery)"


def _pool(inventory: Inventory, pool) -> str | None:
    """--pool NAME: a pool of the inventory, or exit 2 (one line) before anything connects."""
    if pool in (None, ""):
        return None
    if pool not in inventory.celery.pools:
        raise Exit(f"--pool {pool}: {inventory.path} has no such pool (pools: {', '.join(inventory.celery.pools)})",
                   code=2)
    return pool


def _inventory_file(c) -> Path:
    """`fabcelery --inventory FILE`; else FABCELERY_INVENTORY; else inventory.yaml beside the
    fabfile (`fab`), or in the current directory (`fabcelery`, which has no fabfile)."""
    named = c.config.get(INVENTORY_SETTING)
    if named:
        return Path(named)
    fabfile_dir = getattr(c.config, "_project_prefix", None)   # set by Invoke when it loads a fabfile
    return inventory_path(Path(fabfile_dir) if fabfile_dir else Path.cwd())


def _load(c, templates: bool = False) -> tuple[Inventory, list[HostSpec]]:
    names = c.config.get("fabcelery_hosts") or []
    try:
        inventory = load_inventory(_inventory_file(c))
        check_destinations(names)
        if templates:
            # only deploy renders templates; the other tasks start faster without tasks.deploy
            from .rendering import template_dirs

            template_dirs()
        hosts = inventory.select(names)
    except InventoryError as exc:
        raise Exit(str(exc), code=2) from None
    if not hosts:
        raise Exit(f"{inventory.path}: 'hosts' names no host, and none was given with -H.", code=2)
    c.config["fabcelery_bounds"] = inventory.bounds   # for the connections of run_operation
    c.config["fabcelery_project"] = inventory.project.name   # whose lock its changing tasks take
    return inventory, hosts


def _secrets() -> tuple[str, ...]:
    return tuple(v for k, v in os.environ.items() if k.endswith("_PASSWORD") and v)


def _finish(results: list[HostResult], reporter: Reporter) -> None:
    reporter.recap(results)
    _exit_if_interrupted()
    if any(r.failed for r in results):
        raise Exit(code=1)


def _exit_if_interrupted() -> None:
    if STOP.is_set():
        raise Exit(code=INTERRUPTED)


def _seconds(value, flag: str) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) > MAX_BOUND:
        raise Exit(f"{flag} must be a number of seconds from 0 to {MAX_BOUND}; got {value!r}", code=2)
    return int(text)


def _parallel(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise Exit(f"--parallel must be a number of hosts, 1 or more; got {value!r}", code=2)
    return number


@task(
    help={
        "dry-run": "show what would change, with a diff for every file; change nothing",
        "parallel": f"how many hosts at once (default {DEFAULT_PARALLEL})",
        "accept-new-host-keys": "record the host key of a server seen for the first time (never a changed key)",
        "apt-lock-timeout": "how long apt may wait for its lock, held by another apt (e.g. unattended-upgrades "
                            f"at first boot), in seconds (default bounds.apt_lock, {DEFAULT_BOUNDS.apt_lock})",
        "max-fail": "stop starting hosts once more than this percentage of them failed (0: at the first); the "
                    "hosts under way finish, the rest are left untouched (default: every host is deployed)",
    }
)
def deploy(c, dry_run=False, parallel=DEFAULT_PARALLEL, accept_new_host_keys=False, apt_lock_timeout=None,
           max_fail=None):
    """Take the hosts to a running, supervised Celery cluster (idempotent)."""
    from .fleet import deploy_fleet  # here, not above: the other tasks start faster without it

    lock = _seconds(apt_lock_timeout, "--apt-lock-timeout")
    try:
        share = None if max_fail in (None, "") else max_fail_share(max_fail)
    except ValueError as exc:
        raise Exit(str(exc), code=2) from None
    inventory, hosts = _load(c, templates=True)
    if lock is not None:
        inventory = dataclasses.replace(inventory, bounds=inventory.bounds.merged({"apt_lock": lock}))
    reporter = Reporter(secrets=_secrets())
    reporter.set_hosts([h.name for h in hosts])
    if dry_run:
        reporter.plain("dry run: nothing will be changed")
    _finish(deploy_fleet(inventory, hosts, c.config, reporter, dry_run, accept_new_host_keys, _parallel(parallel),
                         max_fail=share), reporter)


def _on_hosts(c, hosts: list[HostSpec], build: Callable[[HostSpec], Operation], reporter: Reporter,
              parallel, quiet: bool = False) -> list[OperationResult]:
    return on_hosts(c, hosts, build, reporter, _parallel(parallel), quiet)

def _day_two(c, build: Callable[[Target, str | None], Operation], parallel, pool=None) -> None:
    """A day-two task: its operation on every host (--parallel at a time), then the recap."""
    inventory, hosts = _load(c)
    pool = _pool(inventory, pool)
    reporter = Reporter(secrets=_secrets())
    _finish(_on_hosts(c, hosts, lambda h: build(Target.of(inventory, h), pool), reporter, parallel), reporter)


def _host_status(result: OperationResult) -> HostStatus:
    outcome = result.outcome
    if outcome is not None and outcome.status is not None:
        return outcome.status
    if not result.reached:
        return unreachable(result.host, result.error or "unreachable")
    return failed_status(result.host, result.error or "status failed")


@task(help={"json": "print the table as JSON (for scripts and monitoring); the recap goes to stderr",
            "parallel": PARALLEL_HELP})
def status(c, json_=False, parallel=DEFAULT_PARALLEL):
    """Programs, state, pid, uptime and broker health: one table.

    Exit status 0 only if every program on every host is RUNNING and every broker answers.
    """
    inventory, hosts = _load(c)
    reporter = Reporter(stream=sys.stderr if json_ else None, secrets=_secrets())
    results = _on_hosts(c, hosts, lambda h: status_operation(Target.of(inventory, h)), reporter, parallel, quiet=True)
    # exactly one celery beat among the hosts asked (tasks/beats.py)
    statuses = with_beat_check(inventory, [_host_status(r) for r in results])
    # one row per queue of the inventory's pools, when the broker host was asked (tasks/queues.py)
    queues = queue_rows(inventory, statuses)
    # the workers that run and do not take their queue's tasks say so (tasks/scripts/stall_rule.py)
    statuses = mark_programs(statuses, queues)
    if json_:
        print(reporter.mask(json.dumps(status_document(statuses, queues), indent=2)), flush=True)
    else:
        reporter.plain(status_table(statuses, color=sys.stdout.isatty()))
        if queues:
            reporter.plain("\n" + queue_table(queues, unacked_total(statuses), color=sys.stdout.isatty()))
    for result, state in zip(results, statuses, strict=True):
        result.ok, result.failed = state.counts()
        result.changed = 0
    # a queue NOT CONSUMED counts as failed on the broker host that holds it (never failed=0)
    stuck = [q.name for q in queues or [] if q.state == NOT_CONSUMED]
    broker_result = next((r for r, s in zip(results, statuses, strict=True) if s.queue_counts is not None), None)
    if stuck and broker_result is not None:
        broker_result.failed += len(stuck)
        broker_result.notes = [*broker_result.notes, f"NOT CONSUMED: {', '.join(stuck)}"]
    reporter.recap(results, counting=STATUS_COUNTS)
    _exit_if_interrupted()
    if not fleet_ok(statuses) or not queues_ok(queues):
        raise Exit(code=1)


@task(help={"timeout": f"how long to wait for each canary to be taken, in seconds (default {CHECK_TIMEOUT})",
            "pool": "only the queues of this pool (a name from celery.pools)",
            "json": "print the result per queue as JSON (for scripts and monitoring); the rest goes to stderr"})
def check(c, timeout=CHECK_TIMEOUT, pool=None, json_=False):
    """A canary through every queue of every pool: which pool took it, the round trip.

    Into each queue goes one message of a built-in Celery task, already expired: the worker
    that takes it discards it unrun. Exit status 1 names each queue whose canary nobody took
    within --timeout, or that a pool which should not consume it took. Runs from the first
    host asked that has the project (a worker or beat host); the others are not touched.
    """
    from .check import canaries, check_document, check_hosts, check_rows, check_table, failure_summary

    inventory, hosts = _load(c)
    seconds = _seconds(timeout, "--timeout")
    if not seconds:
        raise Exit(f"--timeout must be a number of seconds from 1 to {MAX_BOUND}; got {timeout!r}", code=2)
    pool = _pool(inventory, pool)
    planned = canaries(inventory, pool)
    candidates = check_hosts(inventory, hosts)
    if not candidates:
        raise Exit(f"fab check runs from a host with the project's code (a worker or beat host); "
                   f"{', '.join(h.name for h in hosts)} {'has' if len(hosts) == 1 else 'have'} none in "
                   f"{inventory.path}.", code=2)
    if not planned:
        raise Exit(f"{inventory.path}: no pool consumes a queue; nothing to check.", code=2)
    reporter = Reporter(stream=sys.stderr if json_ else None, secrets=_secrets())
    reporter.set_hosts([h.name for h in candidates])
    queues = [p.queue for p in planned]
    result = None
    for host in candidates:   # the first that can be reached runs it
        result = run_operation(c, host, check_operation(Target.of(inventory, host), queues, seconds), reporter)
        if result.reached or STOP.is_set():
            break
    outcome = result.outcome
    if outcome is None or outcome.failed:
        if json_:
            why = (outcome.failed if outcome is not None else "") or result.error or "the check did not run"
            document = check_document([], result.host if result.reached else None, why)
            print(reporter.mask(json.dumps(document, indent=2)), flush=True)
        _finish([result], reporter)
        return
    rows = check_rows(planned, outcome.report, seconds)
    if json_:
        print(reporter.mask(json.dumps(check_document(rows, result.host), indent=2)), flush=True)
    else:
        reporter.plain(check_table(rows, color=sys.stdout.isatty()))
    result.ok, result.failed = sum(r.ok for r in rows), sum(not r.ok for r in rows)
    if summary := failure_summary(rows):
        reporter.plain(summary)
    reporter.recap([result], counting="counting queues: ok = its canary taken by a worker of its pool")
    _exit_if_interrupted()
    if result.failed:
        raise Exit(code=1)


@task(
    help={
        "dry-run": "show what would be removed; change nothing",
        "purge": "also purge the packages fabcelery installed, and the virtualenv if fabcelery created it",
        "parallel": PARALLEL_HELP,
        "accept-new-host-keys": "record the host key of a server seen for the first time (never a changed key)",
    }
)
def undeploy(c, dry_run=False, purge=False, parallel=DEFAULT_PARALLEL, accept_new_host_keys=False):
    """Remove what fabcelery put on the hosts (programs stopped with a warm shutdown first).

    Never the project's code, its own virtualenv packages, the rest of settings_local.py or
    the project user. Run it again and it changes nothing.
    """
    from .fleet import undeploy_fleet

    inventory, hosts = _load(c)
    reporter = Reporter(secrets=_secrets())
    reporter.set_hosts([h.name for h in hosts])
    if dry_run:
        reporter.plain("dry run: nothing will be changed")
    _finish(undeploy_fleet(inventory, hosts, c.config, reporter, dry_run, accept_new_host_keys, _parallel(parallel),
                           purge), reporter)

@task(optional=["rolling"],
      help={"rolling": "restart one host at a time (or N: --rolling=N; or a share of the hosts: --rolling=10%), "
                       "each worker answering ping before the next",
            "max-fail": "with --rolling: go on past failed hosts up to this percentage of the hosts (default 0: stop "
                        "at the first)",
            "pool": POOL_HELP, "parallel": PARALLEL_HELP})
def restart_celery(c, rolling=None, pool=None, parallel=DEFAULT_PARALLEL, max_fail=None):
    """Graceful restart (warm shutdown); --rolling: host by host.

    Warm shutdown: the worker gets TERM and finishes its running tasks (up to stopwaitsecs)
    before it exits, then starts again and must answer `celery inspect ping`.
    """
    inventory, hosts = _load(c)
    try:
        size = rolling_size(rolling, len(hosts))
        share = max_fail_share(max_fail)
    except ValueError as exc:
        raise Exit(str(exc), code=2) from None
    pool = _pool(inventory, pool)
    reporter = Reporter(secrets=_secrets())
    build = lambda h: restart_operation(Target.of(inventory, h), pool)  # noqa: E731
    if size is None:
        if max_fail not in (None, ""):
            raise Exit("--max-fail goes with --rolling (a restart of all hosts at once does not stop); nothing was "
                       "restarted.", code=2)
        _finish(_on_hosts(c, hosts, build, reporter, parallel), reporter)
        return
    _finish(rolling_restart(c, hosts, build, reporter, min(size, _parallel(parallel)), size, max_fail=share), reporter)


@task(help={"pool": POOL_HELP, "parallel": PARALLEL_HELP})
def stop_celery(c, pool=None, parallel=DEFAULT_PARALLEL):
    """Stop the celery programs (warm shutdown); supervisord stays."""
    _day_two(c, stop_operation, parallel, pool)


@task(help={"pool": POOL_HELP, "parallel": PARALLEL_HELP})
def start_celery(c, pool=None, parallel=DEFAULT_PARALLEL):
    """Start the celery programs; wait until the workers answer.

    If supervisord itself is down (after `fab shutdown`), it is started first.
    """
    _day_two(c, start_operation, parallel, pool)


@task(help={"parallel": PARALLEL_HELP})
def shutdown(c, parallel=DEFAULT_PARALLEL):
    """Stop supervisord and its programs cleanly (its systemd unit).

    The unit stays enabled: a reboot, `fab start-celery` or `fab deploy` starts it again.
    """
    _day_two(c, lambda target, _: shutdown_operation(target), parallel)


@task(help={"pool": POOL_HELP, "parallel": PARALLEL_HELP})
def ping(c, pool=None, parallel=DEFAULT_PARALLEL):
    """Does each worker answer `celery inspect ping`?"""
    _day_two(c, ping_operation, parallel, pool)


@task(help={"lines": "how many of the last lines of each log (default 20)", "pool": POOL_HELP,
            "parallel": PARALLEL_HELP})
def logs(c, lines=20, pool=None, parallel=DEFAULT_PARALLEL):
    """The last lines of the worker and beat logs."""
    inventory, hosts = _load(c)
    try:
        count = check_lines(lines)
    except ValueError as exc:
        raise Exit(str(exc), code=2) from None
    pool = _pool(inventory, pool)
    reporter = Reporter(secrets=_secrets())
    _finish(_on_hosts(c, hosts, lambda h: logs_operation(Target.of(inventory, h), count, pool), reporter, parallel),
            reporter)


@task(optional=["rolling"],
      help={"rolling": "a RabbitMQ cluster: one node at a time, each back in the cluster with its quorum queues' "
                       "members online before the next (required for a cluster)"})
def restart_broker(c, rolling=None):
    """Restart the broker; a RabbitMQ cluster one node at a time (--rolling).

    Refused when a node of the cluster is already down, partitioned or in alarm: a rolling
    restart must never take a second node away. Stops at the first node that does not come
    back; the nodes after it are left running.
    """
    from .broker_host import manages_broker
    from .rabbitmq_cluster import cluster_hosts

    inventory, hosts = _load(c)
    brokers = [h for h in hosts if manages_broker(inventory, h)]
    reporter = Reporter(secrets=_secrets())
    if not brokers:
        raise Exit(f"{inventory.path}: none of these hosts has the role broker (or 'broker.url' names an external "
                   "one); nothing to restart.", code=2)
    nodes = cluster_hosts(inventory)
    restart = lambda h: broker_restart_operation(Target.of(inventory, h))  # noqa: E731
    if not nodes:
        _finish(_on_hosts(c, brokers, restart, reporter, len(brokers)), reporter)
        return
    if rolling_size(rolling) != 1:
        raise Exit("restart-broker on a RabbitMQ cluster restarts one node at a time: run it with --rolling "
                   "(nothing was restarted).", code=2)
    # every node of the cluster, also those not named with -H, must be up and clustered first
    reporter.set_hosts([h.name for h in nodes])
    checked = _on_hosts(c, nodes, lambda h: status_operation(Target.of(inventory, h)), reporter, len(nodes),
                        quiet=True)
    statuses = {r.host: _host_status(r) for r in checked}
    bad = {name: (s.broker.state + ": " + s.broker.detail) if s.broker and not s.broker.ok else (s.error or "")
           for name, s in statuses.items() if s.error or (s.broker and not s.broker.ok)}
    if bad:
        for name, why in bad.items():
            reporter.line(name, f"{'broker':<12} {why}")
        raise Exit("restart-broker --rolling refused: the cluster is not whole ("
                   + "; ".join(f"{n}: {w.split(':')[0]}" for n, w in bad.items())
                   + "); bring every node back first (`fab status`). Nothing was restarted.", code=1)
    order = [h for h in nodes if h.name in {b.name for b in brokers}]
    _finish(rolling_restart(c, order, restart, reporter, 1, 1, step="broker"), reporter)


ns = Collection(deploy, undeploy, status, check, restart_celery, start_celery, stop_celery, shutdown, ping, logs,
                restart_broker)
# Each task runs once for all its hosts, concurrently (tasks/executor.py): with `fab` in this
# checkout, `fabcelery`, and a fabfile of a user's own that imports ns.
ns.configure({"tasks": {"executor_class": f"{__package__}.executor.FleetExecutor"}})
