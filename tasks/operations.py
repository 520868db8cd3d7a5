"""Day-two operations: status, start, stop, restart, shutdown, ping and logs.

Everything here is pure. For each task and host there is an Operation: the one
program that runs on the host (tasks/scripts/*.sh, given its values as arguments), and
a function that reads the sections it printed (tasks/runner.py) and says what happened
(an Outcome). tasks/cli.py runs the operations over SSH, concurrently across hosts, and
reports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from .beats import BeatProcess, project_beats
from .broker import broker_of
from .broker_host import manages_broker
from .inventory import HostSpec, Inventory
from .layout import Layout
from .probe import Facts
from .programs import Program, inventory_queues, programs_for, stop_seconds
from .queues import BrokerCounts, QueueRow, parse_rabbitmq_counts, parse_redis_counts, queue_document, queues_ok
from .rabbitmq_broker import RABBITMQ_UNIT
from .rabbitmq_cluster import CLUSTER_TIMEOUT, cluster_hosts, in_cluster, rabbit_node
from .report import HostResult, printable
from .runner import Section, Sections, parse_sections
from .scripts import SYSTEM_PYTHON, shell_program, text
from .supervisor import ProgramStatus, parse_status, start_direct

# How long a started worker may take to answer `celery inspect ping` (an Arches
# project's worker needs 10-15 s after start: it imports all of Arches).
READY_TIMEOUT = 120
# `celery inspect ping -d NODE --timeout 2` returns as soon as that worker answers.
PING_TIMEOUT = 2
STATUS_TIMEOUT = 30           # status: supervisorctl and the broker's ping, all bounded
# how the queues' counts are read from fab status's output, by the section that holds them
# (the broker kind's counts_section)
COUNTS = {"redis": parse_redis_counts, "rabbitmq": parse_rabbitmq_counts}
MAX_LOG_LINES = 10000


# --- the shape of an operation ------------------------------------------------------


@dataclass
class Outcome:
    """What happened on one host: lines for the user, and whether anything changed or failed."""

    lines: list[str] = field(default_factory=list)
    changed: bool = False
    failed: str = ""              # why, in one line; empty when it worked
    status: HostStatus | None = None             # status: the host's programs and broker
    before: dict[str, int | None] = field(default_factory=dict)   # restart: each program's pid before
    after: dict[str, int | None] = field(default_factory=dict)    # ... and after
    report: dict = field(default_factory=dict)    # check: what the canary script said (tasks/check.py)


@dataclass
class OperationResult(HostResult):
    """A day-two task's result on one host: the recap's counts and what its program found."""

    outcome: Outcome | None = None


@dataclass(frozen=True)
class Operation:
    """One task on one host: the program to run, and how to read its sections."""

    step: str                                     # the label of the host's output lines
    summary: str                                  # what is about to happen ("" = say nothing)
    script: str = ""                              # "" = nothing to run (and no SSH at all)
    read: Callable[[Sections], Outcome] | None = None
    timeout: int = 60
    skip: str = ""                                # why there is nothing to do here
    timed: bool = True                            # add the time it took to the first line
    locks: str = ""                               # the task's name, if it takes the project's lock (tasks/lock.py)

    def interpret(self, output: str) -> Outcome:
        """What the program's printed output says (ScriptOutputError if it did not run through)."""
        return self.read(parse_sections(output))


# --- the programs: tasks/scripts/*.sh with their values -----------------------------


def _program(inventory: Inventory, *names: str, options: dict[str, object] | None = None,
             programs: list[str] = ()) -> str:
    """The day-two program made of lib.sh and `names`, given the project's supervisord (and
    `options`) as `--NAME VALUE` arguments, then the programs' names."""
    layout = Layout(inventory.project)
    values = {"user": inventory.project.user, "venv": inventory.project.virtualenv, "conf": layout.supervisord_conf,
              "pidfile": layout.supervisord_pid, **(options or {})}
    args = [part for name, value in values.items() for part in (f"--{name}", value)]
    return shell_program("lib.sh", *names, args=[*args, "--", *programs])


def _worker_options(inventory: Inventory, table: list[Program]) -> dict[str, object]:
    """What workers.sh needs: the workers to ping (celery_ping), the bound of wait_ready, the logs
    to show when it failed."""
    return {"workers": " ".join(p.name for p in table if p.is_worker), "app": inventory.celery.app,
            "workdir": inventory.project.path, "pingtimeout": PING_TIMEOUT, "readytimeout": int(READY_TIMEOUT),
            "logs": " ".join(p.log for p in table)}


# --- reading supervisorctl status -----------------------------------------------------


def program_states(text: str, programs: list[str]) -> dict[str, ProgramStatus | None]:
    """Each expected program's status (a `group:name` program counts for its group)."""
    found = parse_status(text)
    states: dict[str, ProgramStatus | None] = {}
    for program in programs:
        states[program] = next((p for p in found if p.name == program or p.name.startswith(program + ":")), None)
    return states


def _pids(text: str, programs: list[str]) -> dict[str, int | None]:
    return {name: (p.pid if p else None) for name, p in program_states(text, programs).items()}


def _not_running(text: str, programs: list[str]) -> list[str]:
    problems = []
    for name, p in program_states(text, programs).items():
        if p is None:
            problems.append(f"{name} is not configured in supervisord")
        elif p.state != "RUNNING":
            problems.append(f"{name} is {p.state}" + (f" ({p.description})" if p.description else ""))
    return problems


def _supervisord_error(text: str) -> tuple[bool, str]:
    """supervisorctl's complaint when it cannot reach supervisord, made readable, and whether
    it says that supervisord is not running."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "no such file" in first or "refused connection" in first or "SHUTDOWN_STATE" in first:
        return True, f"supervisord is not running ({first})"
    return False, first


def _last_lines(text: str, count: int = 5) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def _ping_answers(text: str) -> dict[str, str]:
    """'->  celery@h: OK\\n        pong\\n->  exports@h: OK ...' -> {'celery@h': 'pong', ...}."""
    answers: dict[str, str] = {}
    node = None
    for line in text.splitlines():
        match = re.match(r"\s*->\s+(\S+?):\s+OK", line)
        if match:
            node = match.group(1)
            answers[node] = "OK"
        elif node and line.strip():
            answers[node] = line.strip() if answers[node] == "OK" else answers[node]
            node = None
    return answers


# --- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramRow:
    name: str
    state: str
    pid: int | None = None
    uptime: str = ""
    detail: str = ""
    queues: tuple[str, ...] = ()      # a worker pool's queues

    @property
    def cell(self) -> str:
        """The DETAIL cell of the table: a pool's queues, and why it is not running."""
        return "; ".join(x for x in ("queues: " + ", ".join(self.queues) if self.queues else "", self.detail) if x)

    @property
    def ok(self) -> bool:
        return self.state in ("RUNNING", "UP")


@dataclass(frozen=True)
class HostStatus:
    host: str
    reachable: bool = True
    error: str = ""                          # the host could not be asked (unreachable, sudo, ...)
    programs: tuple[ProgramRow, ...] = ()
    broker: ProgramRow | None = None         # on broker hosts: the broker's health
    cluster: dict | None = None              # a RabbitMQ cluster's node: what it says of the cluster
    beats: tuple[BeatProcess, ...] = ()      # the processes that run the app's celery beat (tasks/beats.py)
    queue_counts: BrokerCounts | None = None  # on the broker host: its queues' lengths (tasks/queues.py)
    stall: dict | None = None                # the stall rule's histories on this host (tasks/scripts/stall_rule.py)

    @property
    def ok(self) -> bool:
        return not self.error and all(p.ok for p in self.rows)

    @property
    def rows(self) -> tuple[ProgramRow, ...]:
        return self.programs + ((self.broker,) if self.broker else ())

    def counts(self) -> tuple[int, int]:
        """(healthy, unhealthy) things on this host, for the recap."""
        if self.error:
            return 0, 1
        good = sum(1 for r in self.rows if r.ok)
        return good, len(self.rows) - good


def status_script(inventory: Inventory, host: HostSpec) -> str:
    """`fab status` on one host: its programs' states and, on a broker host, the broker's ping."""
    layout = Layout(inventory.project)
    names, options = ["status.sh", "status-beat.sh"], {"socket": layout.socket,
                                                       "statuspy": text("supervisor_status.py")}
    if manages_broker(inventory, host):
        name, broker_options = broker_of(inventory).status_part(host)
        names.append(name)
        options.update(broker_options)
    # the stall rule's histories, kept on this host (its workers' and its broker's queues)
    names.append("status-stall.sh")
    options.update(stallpy=text("stall_rule.py"), stallstate=stall_state(inventory),
                   pools=";".join(f"{p.name}={','.join(p.queues)}" for p in inventory.celery.pools.values()),
                   queues=" ".join(inventory_queues(inventory)))
    return _program(inventory, *names, options=options)


def stall_state(inventory: Inventory) -> str:
    """The stall rule's state file on each host (tasks/scripts/stall_rule.py)."""
    return f"{Layout(inventory.project).fabcelery_dir}/stall-state.json"


def stall_histories(s: Sections) -> dict | None:
    """What status-stall.sh printed: {"now", "programs", "queues"} (the parts it had)."""
    found: dict = {}
    for name in ("stallprograms", "stallqueues"):
        if name in s and s[name].ok:
            try:
                part = json.loads(s[name].text.strip().splitlines()[-1])
            except (ValueError, IndexError):
                continue
            if isinstance(part, dict):
                found.update(part)
    return found or None


def cluster_row(inventory: Inventory, host: HostSpec, section: Section | None) -> tuple[ProgramRow, dict | None]:
    """A cluster node's broker row, from its `rabbitmqctl cluster_status --formatter json`: UP
    when it runs as a member of the whole cluster, with no partition and no alarm (memory,
    disk); else DOWN, NOT-CLUSTERED, PARTITIONED or ALARM, with what is wrong."""
    unit = RABBITMQ_UNIT.removesuffix(".service")
    me = rabbit_node(host)
    expected = [rabbit_node(h) for h in cluster_hosts(inventory)]
    if section is None:
        return ProgramRow(unit, "DOWN", detail="rabbitmqctl is not installed"), None
    try:
        raw = json.loads(section.text[section.text.find("{"):]) if section.ok else None
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        return ProgramRow(unit, "DOWN", detail=f"{me} does not answer: {_last_lines(section.text, 1) or 'no answer'}"
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


def _status_facts(s: Sections) -> Facts:
    redis = s["redis"].text.strip().splitlines() if "redis" in s else None
    return Facts(
        supervisor_status=s["supervisor"].text if "supervisor" in s else None,
        redis_ping=(redis[0] if redis else "") if redis is not None else None,
        rabbitmq_ping=s["rabbitmq"].ok if "rabbitmq" in s else None,
    )


def host_status(inventory: Inventory, host: HostSpec, facts: Facts) -> HostStatus:
    """One host's rows of the status table, from the probe's facts."""
    layout = Layout(inventory.project)
    table = programs_for(inventory, host)
    rows: list[ProgramRow] = []
    text = facts.supervisor_status
    found = parse_status(text)
    if text is None:
        why = f"not deployed ({layout.supervisord_conf} or {SYSTEM_PYTHON} is missing)"
        rows = [ProgramRow(p.name, "MISSING", detail=why, queues=p.queues) for p in table]
    else:
        not_running, down = (False, "") if found else _supervisord_error(text)
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
    if manages_broker(inventory, host):
        kind = broker_of(inventory)
        state, detail = kind.health(facts)
        broker = ProgramRow(kind.unit.removesuffix(".service"), state, detail=detail)
    return HostStatus(host=host.name, programs=tuple(rows), broker=broker)


def _row(p: ProgramStatus, queues: tuple[str, ...] = ()) -> ProgramRow:
    detail = "" if p.state == "RUNNING" else stopped_when(p.state, p.description)
    return ProgramRow(p.name, p.state, p.pid, p.uptime, detail, queues)


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


def status_operation(inventory: Inventory, host: HostSpec) -> Operation:
    def read(s: Sections) -> Outcome:
        status = host_status(inventory, host, _status_facts(s))
        status = replace(status, beats=project_beats(inventory, s["beats"].text if "beats" in s else None))
        if manages_broker(inventory, host) and (section := broker_of(inventory).counts_section(host)):
            counts = COUNTS[section](inventory, s[section].text if section in s else None)
            status = replace(status, queue_counts=counts)
        status = replace(status, stall=stall_histories(s))
        if in_cluster(inventory, host):
            row, info = cluster_row(inventory, host, s.get("cluster"))
            status = replace(status, broker=row, cluster=info)
        problems = [f"{r.name} {r.state}" for r in status.rows if not r.ok]
        return Outcome(failed=", ".join(problems), status=status)

    return Operation("status", "", status_script(inventory, host), read, STATUS_TIMEOUT)


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
                "detail": r.detail or None, "queues": list(r.queues) or None, "ok": r.ok}

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


# --- start, stop, restart -------------------------------------------------------------


def _no_programs(table: list[Program], step: str, pool: str | None) -> Operation | None:
    if not table:
        why = f"the pool {pool} does not run on this host" if pool else "no celery programs on this host"
        return Operation(step, "", skip=why)
    return None


def stop_operation(inventory: Inventory, host: HostSpec, pool: str | None = None) -> Operation:
    """Stop the celery programs (or one pool's): TERM to the worker, which finishes its running tasks first."""
    table = programs_for(inventory, host, pool)
    if skip := _no_programs(table, "stop", pool):
        return skip
    programs = [p.name for p in table]
    lines = _program(inventory, "stop.sh", programs=programs)

    def read(s: Sections) -> Outcome:
        if "down" in s:
            return Outcome([f"ok (supervisord is not running: {', '.join(programs)} not running)"])
        before = program_states(s["before"].text, programs)
        was_running = [n for n, p in before.items() if p and p.state in ("RUNNING", "STARTING", "BACKOFF")]
        after = program_states(s["after"].text, programs)
        still = [f"{n} is {p.state}" for n, p in after.items() if p and p.state not in ("STOPPED", "EXITED", "FATAL")]
        missing = [n for n, p in after.items() if p is None]
        if still or missing or not s["stop"].ok:
            why = "; ".join(still + [f"{n} is not configured in supervisord" for n in missing]) \
                or _last_lines(s["stop"].text)
            return Outcome([f"failed: {why}"], failed=why)
        if not was_running:
            return Outcome([f"ok ({', '.join(programs)} already stopped)"])
        return Outcome([f"stopped {', '.join(was_running)}"], changed=True)

    return Operation("stop", f"stop {', '.join(programs)} (warm shutdown: running tasks finish first)",
                     lines, read, stop_seconds(table) + 60, locks="stop-celery")


def start_operation(inventory: Inventory, host: HostSpec, pool: str | None = None) -> Operation:
    """Start the celery programs or one pool's (and supervisord, if it is down); wait for the workers to answer."""
    table = programs_for(inventory, host, pool)
    if skip := _no_programs(table, "start", pool):
        return skip
    layout = Layout(inventory.project)
    programs = [p.name for p in table]
    unit = layout.unit_name
    lines = _program(inventory, "workers.sh", "start.sh", programs=programs, options={
        **_worker_options(inventory, table), "unit": unit, "unitfile": layout.unit_file,
        "startdirect": start_direct(layout)})
    workers = [p for p in table if p.is_worker]

    def read(s: Sections) -> Outcome:
        if "supervisord" in s and not s["supervisord"].ok:
            why = "supervisord did not start: " + _last_lines(s["supervisord"].text)
            return Outcome([f"failed: {why}"], failed=why)
        before = program_states(s["before"].text, programs)
        was = [n for n, p in before.items() if not p or p.state != "RUNNING"]
        ready = s["ready"]
        if not ready.ok:
            return _not_ready(ready, s, programs, workers)
        started = "supervisord and " if "supervisord" in s else ""
        pids = _pids(ready.text, programs)
        detail = ", ".join(f"{n} pid {pids[n]}" for n in programs)
        ping = _answers(ready.text, workers)
        if not was and "supervisord" not in s:
            return Outcome([f"ok (already running: {detail}{ping})"])
        return Outcome([f"started {started}{', '.join(was) or 'programs'}: {detail}{ping}"], changed=True)

    return Operation("start", f"start {', '.join(programs)}", lines, read, READY_TIMEOUT + 120, locks="start-celery")


def restart_operation(inventory: Inventory, host: HostSpec, pool: str | None = None) -> Operation:
    """supervisorctl restart (of every program, or one pool's): TERM (warm shutdown, up to
    stopwaitsecs), start, then wait for ping."""
    table = programs_for(inventory, host, pool)
    if skip := _no_programs(table, "restart", pool):
        return skip
    programs = [p.name for p in table]
    workers = [p for p in table if p.is_worker]
    lines = _program(inventory, "workers.sh", "restart.sh", programs=programs,
                     options=_worker_options(inventory, table))

    def read(s: Sections) -> Outcome:
        if "down" in s:
            why = "supervisord is not running: `fab start-celery` starts it"
            return Outcome([f"failed: {why}"], failed=why)
        before = _pids(s["before"].text, programs)
        ready = s["ready"]
        if not ready.ok:
            return _not_ready(ready, s, programs, workers)
        after = _pids(ready.text, programs)
        same = [n for n in programs if before[n] and before[n] == after[n]]
        if same:
            why = f"{', '.join(same)} kept the same pid: not restarted ({_last_lines(s['restart'].text)})"
            return Outcome([f"failed: {why}"], failed=why)
        detail = ", ".join(f"{n} pid {before[n] or '-'} -> {after[n]}" for n in programs)
        ping = _answers(ready.text, workers)
        return Outcome([f"restarted {detail}{ping}"], changed=True, before=before, after=after)

    return Operation("restart", f"restart {', '.join(programs)} (warm shutdown: running tasks finish first)",
                     lines, read, stop_seconds(table) + READY_TIMEOUT + 120, locks="restart-celery")


def _not_ready(ready: Section, s: dict[str, Section], programs: list[str], workers: list[Program]) -> Outcome:
    problems = _not_running(ready.text, programs)
    if not problems and workers:
        silent = [p.name for p in workers if p.name + "@" not in " ".join(_nodes_answering(ready.text))]
        which = "the worker" if len(workers) == 1 else f"the worker{'s' if len(silent) > 1 else ''} " + \
            ", ".join(silent or [p.name for p in workers])
        problems = [f"{which} does not answer celery inspect ping within {READY_TIMEOUT} s: "
                    f"{_last_lines(ready.text, 2)}"]
    why = "; ".join(problems) or _last_lines(ready.text)
    lines = [f"failed: {why}"]
    if "log" in s:
        lines += ["last lines of the log:"] + ["  " + line for line in s["log"].text.splitlines()]
    return Outcome(lines, failed=why)


def _nodes_answering(text: str) -> list[str]:
    return re.findall(r"->\s+(\S+?):\s+OK", text)


def _answers(text: str, workers: list[Program]) -> str:
    """'; celery@h answers ping' (or 'celery@h, exports@h answer ping'), for the outcome's line."""
    nodes = _nodes_answering(text)
    if not workers:
        return ""
    if not nodes:
        return "; the worker answers ping"
    return f"; {', '.join(nodes)} answer{'s' if len(nodes) == 1 else ''} ping"


# --- rolling restarts -----------------------------------------------------------------


def rolling_size(value: object, hosts: int = 1) -> int | None:
    """`--rolling` (one host at a time), `--rolling N` (N at a time), `--rolling P%` (that share of
    the `hosts`, rounded down, at least one: Ansible's `serial: "P%"`), or no rolling (None)."""
    if value in (None, False, ""):
        return None
    if value is True:
        return 1
    text = str(value).strip()
    if text.endswith("%"):
        share = text[:-1].strip()
        if not share.isdigit() or not 1 <= int(share) <= 100:
            raise ValueError(f"--rolling takes a share of the hosts from 1% to 100%, not {text!r}")
        return max(1, hosts * int(share) // 100)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--rolling takes a number of hosts at a time (1 or more) or a share of them (10%), "
                         f"not {text!r}")
    return int(text)


def max_fail_share(value: object) -> int:
    """`--max-fail PERCENT` (0 to 100, with or without %): the share of the hosts that may fail before
    a rolling restart stops; 0 (the default): it stops at the first."""
    if value in (None, ""):
        return 0
    text = str(value).strip().removesuffix("%").strip()
    if not text.isdigit() or int(text) > 100:
        raise ValueError(f"--max-fail takes a percentage of the hosts from 0 to 100, not {str(value)!r}")
    return int(text)


def too_many_failed(failed: int, hosts: int, max_fail: int) -> bool:
    """More than `max_fail` percent of `hosts` failed (any failure at 0%)."""
    return failed * 100 > max_fail * hosts


def rolling_batches(names: list[str], size: int) -> list[list[str]]:
    """Hosts in the given order, `size` at a time."""
    return [names[i:i + size] for i in range(0, len(names), size)]


# --- restart-broker ------------------------------------------------------------------


def broker_restart_operation(inventory: Inventory, host: HostSpec) -> Operation:
    """Restart this host's broker and wait until it is back. A cluster node first waits
    (bounded) until every quorum queue has a member more online than its quorum and checks
    that no queue depends on this node (RabbitMQ's rolling-upgrade checks: rabbitmq-upgrade
    await_online_quorum_plus_one, rabbitmq-diagnostics check_if_node_is_quorum_critical);
    after the restart it waits until the node runs, every node of the cluster runs, and the
    quorum queues have all their members online again."""
    if not manages_broker(inventory, host):
        return Operation("broker", "", skip="no broker on this host")
    kind = broker_of(inventory)
    unit = kind.unit
    t = int(CLUSTER_TIMEOUT)
    cluster = in_cluster(inventory, host)
    expected = sorted(rabbit_node(h) for h in cluster_hosts(inventory))
    up, options = kind.restart_program()
    script = _program(inventory, up, "restart-broker.sh", options={
        **options, "unit": unit, "timeout": t, "expected": " ".join(expected) if cluster else ""})
    node = rabbit_node(host) if cluster else unit.removesuffix(".service")

    def read(s: Sections) -> Outcome:
        for name, what in (("quorum", "the quorum queues do not have a member more than their quorum online, "
                                      f"so stopping {node} now could make them unavailable"),
                           ("critical", f"{node} is quorum-critical (a quorum queue would lose its quorum)"),
                           ("restart", f"systemctl restart {unit} failed"),
                           ("startup", f"{node} did not start within {t} s"),
                           ("back", f"not every node of the cluster ({', '.join(expected)}) runs within {t} s"),
                           ("synced", f"the quorum queues did not get all their members online within {t} s")):
            if name in s and not s[name].ok:
                why = f"{what}: {_last_lines(s[name].text, 2) or 'exit status ' + str(s[name].rc)}"
                if name in ("quorum", "critical"):
                    why += " (not restarted)"
                return Outcome([f"failed: {why}"], failed=why)
        done = f"restarted {node}" + ("; back in the cluster, every quorum queue's members online" if cluster
                                      else "; it answers")
        return Outcome([done], changed=True)

    return Operation("broker", f"restart {node}" + (" (after the quorum checks)" if cluster else ""),
                     script, read, 4 * t + 120, locks="restart-broker")


# --- shutdown -------------------------------------------------------------------------


def shutdown_operation(inventory: Inventory, host: HostSpec) -> Operation:
    """Stop supervisord and its programs cleanly: the systemd unit, or supervisorctl shutdown."""
    if skip := _no_programs(programs_for(inventory, host), "shutdown", None):
        return skip      # a broker-only host has no supervisord of ours
    layout = Layout(inventory.project)
    unit = layout.unit_name
    limit = stop_seconds(programs_for(inventory, host)) + 60
    lines = _program(inventory, "shutdown.sh", options={"unit": unit, "limit": limit})

    def read(s: Sections) -> Outcome:
        if "down" in s:
            return Outcome(["ok (supervisord is not running)"])
        if not s["gone"].ok:
            failed = next((s[k] for k in ("systemd", "ctl") if k in s and not s[k].ok), None)
            why = "supervisord is still running" + (f": {_last_lines(failed.text)}" if failed else "")
            return Outcome([f"failed: {why}"], failed=why)
        stopped = [p.name for p in parse_status(s["before"].text) if p.state in ("RUNNING", "STARTING", "BACKOFF")]
        how = f"systemctl stop {unit}" if "systemd" in s else "supervisorctl shutdown"
        boot = "; still enabled: starts at boot" if s["enabled"].ok else ""
        return Outcome([f"stopped supervisord ({how}) and {', '.join(stopped) or 'no running program'}{boot}"],
                       changed=True)

    return Operation("shutdown", "stop supervisord and its programs (warm shutdown)", lines, read,
                     limit + 90, locks="shutdown")


# --- ping -----------------------------------------------------------------------------


def ping_operation(inventory: Inventory, host: HostSpec, pool: str | None = None) -> Operation:
    """`celery inspect ping -d celery@HOST,...`: does each worker (pool) of this host answer?"""
    workers = [p for p in programs_for(inventory, host, pool) if p.is_worker]
    if not workers:
        return Operation("ping", "", skip=f"the pool {pool} does not run on this host" if pool
                         else "no worker on this host")
    lines = _program(inventory, "workers.sh", "ping.sh", options=_worker_options(inventory, workers))

    def read(s: Sections) -> Outcome:
        nodes = s["node"].text.strip().split(",")
        answers = _ping_answers(s["ping"].text)
        silent = [n for n in nodes if n not in answers]
        out = [f"{n} answers: {answers[n]}" for n in nodes if n in answers]
        if not silent:
            return Outcome(out)
        detail = _last_lines(s["ping"].text, 2) or "exit status " + str(s["ping"].rc)
        why = f"{', '.join(silent)} do{'es' if len(silent) == 1 else ''} not answer: {detail}"
        return Outcome([f"failed: {why}", *out], failed=why)

    return Operation("ping", "", lines, read, PING_TIMEOUT + 60)


# --- logs -----------------------------------------------------------------------------


def check_lines(value: object) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_LOG_LINES:
        raise ValueError(f"--lines must be a number from 1 to {MAX_LOG_LINES}, not {text!r}")
    return int(text)


def logs_operation(inventory: Inventory, host: HostSpec, lines: int, pool: str | None = None) -> Operation:
    """The last `lines` lines of the workers' and beat's logs on this host (or one pool's)."""
    files = [p.log for p in programs_for(inventory, host, pool)]
    if not files:
        return Operation("", "", skip=f"the pool {pool} does not run on this host, so no logs" if pool
                         else "no celery programs on this host, so no logs")
    script = _program(inventory, "logs.sh", options={"lines": int(lines)}, programs=files)

    def read(s: Sections) -> Outcome:
        out: list[str] = []
        for i, path in enumerate(files):
            out.append(f"==> {path} <==")
            section = s[f"log{i}"]
            if not section.ok:
                out.append(f"(cannot read it: {printable(_last_lines(section.text)) or 'no such file'})")
            else:
                # a log line is the programs' (and their tasks') text: it must not drive the terminal
                out.extend([printable(line) for line in section.text.splitlines()] or ["(empty)"])
        return Outcome(out)

    return Operation("", "", script, read, 60, timed=False)


# --- check ----------------------------------------------------------------------------


def check_operation(inventory: Inventory, host: HostSpec, queues: list[str], timeout: int) -> Operation:
    """`fab check` from this host: a canary into each of `queues`, and who took it (tasks/check.py)."""
    from .check import CANARY_TASK, expected_nodes, report_of
    from .configs import BEGIN_MARKER, END_MARKER

    layout = Layout(inventory.project)
    script = _program(inventory, "canary.sh", programs=queues, options={
        "canarypy": text("canary.py"), "settings": layout.settings_local, "begin": BEGIN_MARKER,
        "end": END_MARKER, "timeout": timeout, "expected": expected_nodes(inventory)})

    def read(s: Sections) -> Outcome:
        report = report_of(s["canary"].text)
        if "error" in report:
            why = f"the check could not run here: {printable(str(report['error']))}"
            return Outcome([f"failed: {why}"], failed=why, report=report)
        return Outcome([], report=report)

    # connect and import Celery, the first poll, the canaries' bound, the last poll, the Redis cleanup
    many = len(queues) > 1
    summary = (f"{len(queues)} canar{'ies' if many else 'y'} from here: Celery's built-in {CANARY_TASK}, already "
               f"expired, so the worker that takes {'each' if many else 'it'} discards it unrun")
    return Operation("check", summary, script, read, timeout + 60, timed=False)
