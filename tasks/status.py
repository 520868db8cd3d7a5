"""fab status: each host's programs, broker and queues as one table (or JSON), from one bounded
program per host (tasks/scripts/status*.sh); the stall rule's histories and a cluster node's
row; one beat fleet-wide (tasks/beats.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

from .beats import extra_beats, project_beats
from .facts import RabbitmqPing, RedisPing, SupervisorStatus
from .host_status import HostStatus, ProgramRow, when_utc
from .inventory import BEAT_PROGRAM, Inventory
from .operation import Operation, Outcome, host_program, last_lines, supervisord_error
from .probe import Facts, probe_facts
from .programs import inventory_queues
from .queues import (
    QueueRow,
    parse_amqp_counts,
    parse_rabbitmq_counts,
    parse_redis_counts,
    queue_document,
    queues_ok,
)
from .rabbitmq_broker import RABBITMQ_UNIT
from .rabbitmq_cluster import cluster_hosts, rabbit_node
from .runner import Section, Sections, parse_sections
from .scripts import SYSTEM_PYTHON, text
from .supervisor import ProgramStatus, parse_status
from .target import Target
from .watchdog_paths import Paths as WatchdogPaths
from .watchdog_paths import wanted as watchdog_wanted

STATUS_TIMEOUT = 30           # status: supervisorctl and the broker's ping, all bounded

# how the queues' counts are read from fab status's output, by the section that holds them
# (the broker kind's counts_section)
COUNTS = {"redis": parse_redis_counts, "rabbitmq": parse_rabbitmq_counts}


def watchdog_restarts(s: Sections) -> dict[str, dict]:
    """What the watchdog's state says of its last restart of each program (status-stall.sh)."""
    if "watchdog" not in s or not s["watchdog"].ok:
        return {}
    try:
        state = json.loads(s["watchdog"].text)
    except ValueError:
        return {}
    restarts = state.get("restarts") if isinstance(state, dict) else None
    return {name: r for name, r in restarts.items() if isinstance(r, dict)} if isinstance(restarts, dict) else {}


def with_watchdog_restarts(status: HostStatus, restarts: dict[str, dict]) -> HostStatus:
    if not restarts:
        return status
    return replace(status, programs=tuple(replace(p, watchdog=restarts.get(p.name)) for p in status.programs))


def status_script(target: Target) -> str:
    """`fab status` on one host: its programs' states and, on a broker host, the broker's ping."""
    layout = target.layout
    names, options = ["status.sh", "status-beat.sh"], {"socket": layout.socket,
                                                       "statuspy": text("supervisor_status.py")}
    if target.manages_broker:
        name, broker_options = target.broker.status_part(target.host)
        names.append(name)
        options.update(broker_options)
    # the stall rule's histories, kept on this host (its workers' and its broker's queues)
    names.append("status-stall.sh")
    options.update(stallpy=text("stall_rule.py"), stallstate=stall_state(target),
                   pools=";".join(f"{p.name}={','.join(p.queues)}" for p in target.inventory.celery.pools.values()),
                   queues=" ".join(inventory_queues(target.inventory)))
    if watchdog_wanted(target):
        options.update(watchdogstate=WatchdogPaths(layout).state)
    return host_program(target, *names, options=options)


def stall_state(target: Target) -> str:
    """The stall rule's state file on each host (tasks/scripts/stall_rule.py)."""
    return f"{target.layout.fabcelery_dir}/stall-state.json"


def stall_histories(s: Sections) -> dict | None:
    """What status-stall.sh printed: {"now", "programs", "queues"} (the parts it had)."""
    if "stall" not in s or not s["stall"].ok:
        return None
    try:
        found = json.loads(s["stall"].text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return found if isinstance(found, dict) else None


def cli_error(text: str) -> str:
    """What rabbitmqctl says went wrong: its `Error...` line, not the node details it lists
    after it (the last of which is the Erlang cookie's hash)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("Error")), last_lines(text, 1))


def cluster_row(target: Target, section: Section | None) -> tuple[ProgramRow, dict | None]:
    """A cluster node's broker row, from its `rabbitmqctl cluster_status --formatter json`: UP
    when it runs as a member of the whole cluster, with no partition and no alarm (memory,
    disk); else DOWN, NOT-CLUSTERED, PARTITIONED or ALARM, with what is wrong."""
    unit = RABBITMQ_UNIT.removesuffix(".service")
    me = rabbit_node(target.host)
    expected = [rabbit_node(h) for h in cluster_hosts(target.inventory)]
    if section is None:
        return ProgramRow(unit, "DOWN", detail="rabbitmqctl is not installed"), None
    try:
        raw = json.loads(section.text[section.text.find("{"):]) if section.ok else None
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        return ProgramRow(unit, "DOWN", detail=f"{me} does not answer: {cli_error(section.text) or 'no answer'}"
                          ), None
    running = [str(n) for n in raw.get("running_nodes") or []]
    members = [str(n) for n in (raw.get("disk_nodes") or []) + (raw.get("ram_nodes") or [])]
    partitions = raw.get("partitions") or {}
    alarms = [a if isinstance(a, str) else " ".join(f"{v}" for v in a.values()) if isinstance(a, dict) else str(a)
              for a in raw.get("alarms") or []]
    info = {"node": me, "members": members, "running_nodes": running, "partitions": partitions, "alarms": alarms,
            "expected": expected}
    down = [n for n in expected if n not in running]
    where = f"cluster: {len([n for n in expected if n in running])}/{len(expected)} nodes running" + (
        f", down: {', '.join(down)}" if down else "")
    if me not in running:
        return ProgramRow(unit, "DOWN", detail=f"{me} is not running (its Erlang VM answers; {where})"), info
    missing = [n for n in expected if n not in members]
    if missing:
        return ProgramRow(unit, "NOT-CLUSTERED", detail=f"{me}'s cluster lacks {', '.join(missing)} "
                                                        f"(members: {', '.join(members)})"), info
    if partitions:
        parts = "; ".join(f"{n} cannot see {', '.join(map(str, p))}" for n, p in partitions.items())
        return ProgramRow(unit, "PARTITIONED", detail=f"network partition: {parts}"), info
    if alarms:
        return ProgramRow(unit, "ALARM", detail=f"alarms (publishers are blocked): {', '.join(alarms)}; {where}"), info
    return ProgramRow(unit, "UP", detail=f"{me}, member; {where}; no partitions, no alarms"), info


def status_facts(output: str) -> Facts:
    """What status_script found, as the probe's facts."""
    return _status_facts(parse_sections(output))


# The probe's facts that fab status reads from its own scripts' sections (status.sh and the broker
# host's part): the same parsers, other sections (supervisorctl's answer kept for status-stall.sh;
# redis-cli's PING in the one session that counts the queues; a RabbitMQ queue listing that
# tells that the node runs).
STATUS_FACTS = (SupervisorStatus("supervisor"), RedisPing("redis"), RabbitmqPing("rabbitmq"))


def _status_facts(s: Sections) -> Facts:
    return probe_facts(s, STATUS_FACTS)


def host_status(target: Target, facts: Facts) -> HostStatus:
    """One host's rows of the status table, from the probe's facts."""
    layout = target.layout
    table = target.programs
    rows: list[ProgramRow] = []
    text = facts.supervisor_status
    found = parse_status(text)
    if text is None:
        why = f"not deployed ({layout.supervisord_conf} or {SYSTEM_PYTHON} is missing)"
        rows = [ProgramRow(p.name, "MISSING", detail=why, queues=p.queues) for p in table]
    else:
        not_running, down = (False, "") if found else supervisord_error(text)
        missing = "DOWN" if not_running else "MISSING"
        claimed: set[str] = set()
        for program in table:
            members = [p for p in found if p.name == program.name or p.name.startswith(program.name + ":")]
            claimed.update(p.name for p in members)
            if not members:
                rows.append(ProgramRow(program.name, missing, detail=down or "not configured in supervisord",
                                       queues=program.queues))
            rows.extend(_row(p, program.queues) for p in members)
        rows.extend(_row(p) for p in found if p.name not in claimed)
    broker = None
    if target.manages_broker:
        kind = target.broker
        state, detail = kind.health(facts)
        broker = ProgramRow(kind.unit.removesuffix(".service"), state, detail=detail)
    return HostStatus(host=target.host.name, programs=tuple(rows), broker=broker)


def _row(p: ProgramStatus, queues: tuple[str, ...] = ()) -> ProgramRow:
    detail = "" if p.state == "RUNNING" else stopped_when(p.state, p.description)
    return ProgramRow(p.name, p.state, p.pid, p.uptime, p.description, detail=detail, queues=queues)


def stopped_when(state: str, description: str) -> str:
    """supervisord's description of a STOPPED or EXITED program is when it stopped, as
    'Dec 04 02:32 PM': say so, on a 24-hour clock ('stopped at 14:32 (Dec 04)'). Any other
    description ('Not started', an exit status) is shown as it is."""
    if state not in ("STOPPED", "EXITED"):
        return description
    try:   # a leap year, so that Feb 29 reads too
        when = datetime.strptime(f"2000 {description}", "%Y %b %d %I:%M %p")
    except ValueError:
        return description
    return f"{state.lower()} at {when:%H:%M} ({when:%b %d})"


def status_operation(target: Target) -> Operation:
    def read(s: Sections) -> Outcome:
        status = host_status(target, _status_facts(s))
        status = replace(status, beats=project_beats(target.inventory, s["beats"].text if "beats" in s else None))
        if target.manages_broker and (section := target.broker.counts_section(target.host)):
            counts = COUNTS[section](target.inventory, s[section].text if section in s else None)
            status = replace(status, queue_counts=counts)
        status = replace(status, stall=stall_histories(s))
        status = with_watchdog_restarts(status, watchdog_restarts(s))
        if target.in_cluster:
            row, info = cluster_row(target, s.get("cluster"))
            # this node's view of the queues over AMQP; a node down has none (queue_rows takes another's)
            queues = s.get("rabbitmq")
            counts = parse_amqp_counts(target.inventory, queues.text) if queues is not None and queues.ok else None
            status = replace(status, broker=row, cluster=info, queue_counts=counts)
        problems = [f"{r.name} {r.state}" for r in status.rows if not r.ok]
        return Outcome(failed=", ".join(problems), status=status)

    return Operation("status", "", status_script(target), read, STATUS_TIMEOUT)


def unreachable(name: str, error: str) -> HostStatus:
    return HostStatus(host=name, reachable=False, error=error)


def failed_status(name: str, error: str) -> HostStatus:
    """Reached, but the status command failed (sudo, a broken probe)."""
    return HostStatus(host=name, reachable=True, error=error)


def fleet_ok(statuses: list[HostStatus]) -> bool:
    """Exit 0 only if every program on every host is RUNNING and every broker answers."""
    return bool(statuses) and all(s.ok for s in statuses)


def status_document(statuses: list[HostStatus], queues: list[QueueRow] | None = None) -> dict:
    """`fab status --json`: the same as the table (and the queues, when the broker host was asked)."""

    def row(r: ProgramRow) -> dict:
        return {"name": r.name, "state": r.state, "pid": r.pid, "uptime": r.uptime or None,
                "detail": r.detail or None, "queues": list(r.queues) or None, "ok": r.ok,
                **({"watchdog_restart": {**r.watchdog, "at": when_utc(r.watchdog["at"])}}
                   if r.watchdog and isinstance(r.watchdog.get("at"), (int, float)) else {})}

    return {
        "ok": fleet_ok(statuses) and queues_ok(queues),
        **({"queues": queue_document(queues, unacked_total(statuses))} if queues is not None else {}),
        "hosts": [
            {
                "host": s.host,
                "ok": s.ok,
                "reachable": s.reachable,
                "error": s.error or None,
                "programs": [row(p) for p in s.programs],
                "broker": row(s.broker) if s.broker else None,
                **({"cluster": s.cluster} if s.cluster is not None else {}),
            }
            for s in statuses
        ],
    }


def unacked_total(statuses: list[HostStatus]) -> int | None:
    """The broker's count of messages taken and not yet acknowledged, over all queues."""
    return next((s.queue_counts.unacked_total for s in statuses if s.queue_counts), None)


def status_table(statuses: list[HostStatus], color: bool = False) -> str:
    """The fleet as one table: a row per program (and broker), or one per unreachable host."""
    header = ("HOST", "PROGRAM", "STATE", "PID", "UPTIME", "DETAIL")
    rows: list[tuple[str, ...]] = []
    good: list[bool] = []
    for s in statuses:
        if s.error:
            rows.append((s.host, "-", "UNREACHABLE" if not s.reachable else "ERROR", "-", "-",
                         s.error.splitlines()[0]))
            good.append(False)
            continue
        if not s.rows:
            rows.append((s.host, "-", "-", "-", "-", "no celery programs and no broker on this host"))
            good.append(True)
        for r in s.rows:
            rows.append((s.host, r.name, r.state, str(r.pid) if r.pid else "-", r.uptime or "-", r.cell))
            good.append(r.ok)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...], ok: bool | None) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        if color and ok is not None:
            code = "32" if ok else "31"
            cells[2] = f"\033[{code}m{cells[2]}\033[0m"
        return "  ".join([*cells, row[-1]]).rstrip()

    return "\n".join([line(header, None)] + [line(r, ok) for r, ok in zip(rows, good, strict=True)])


def with_beat_check(inventory: Inventory, statuses: list[HostStatus]) -> list[HostStatus]:
    """The status table's hosts, with every extra beat EXTRA:
    supervisord's celerybeat row (a leftover) turned EXTRA, one started by hand a row of its own."""
    reached = [s for s in statuses if not s.error]
    supervised = {s.host: next((r.pid for r in s.programs if r.name == BEAT_PROGRAM and r.state == "RUNNING"), None)
                  for s in reached}
    extras = extra_beats(inventory, {s.host: s.beats for s in reached}, supervised)
    result = []
    for status in statuses:
        marks = extras.get(status.host)
        if not marks:
            result.append(status)
            continue
        rows = list(status.programs)
        for process, why in marks:
            index = next((i for i, r in enumerate(rows) if r.pid == process.pid), None)
            if index is not None:
                rows[index] = replace(rows[index], state="EXTRA", detail=why)
            else:
                rows.append(ProgramRow("celery beat", "EXTRA", process.pid, detail=why))
        result.append(replace(status, programs=tuple(rows)))
    return result
