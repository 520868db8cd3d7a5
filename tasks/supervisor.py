"""supervisord: the systemd unit that starts it at boot, applying changed programs
(reread/update, so only they restart), and reading `supervisorctl status`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .layout import LEGACY_PROGRAMS_DIR, SYSTEM_SUPERVISORD_CONF, Layout
from .plan import Action, ConfigChanges, Effect, StepName, StepPlan, change, ok
from .probe import Facts, ProbeSpec
from .programs import legacy_program, legacy_program_files, worker_nodes
from .report import printable
from .resources import Custom, Diff, doing, nothing, plan_resources
from .resources_systemd import Unit
from .scripts import pid_alive, root_python, shell_function, text
from .shell import cmd
from .target import Target

# supervisorctl status: "name  STATE  description", name may be "group:name"
STATUS_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\b\s*(?P<desc>.*)$")
MOVED_NOTE = f"program files moved out of {LEGACY_PROGRAMS_DIR}"
STATES = {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN"}


@dataclass(frozen=True)
class ProgramStatus:
    name: str
    state: str
    pid: int | None = None
    uptime: str = ""
    description: str = ""


def parse_status(text: str | None) -> list[ProgramStatus]:
    """`supervisorctl status` output (LC_ALL=C) as a list; lines that are not programs are skipped."""
    programs = []
    for line in (text or "").splitlines():
        match = STATUS_LINE.match(line.strip())
        if not match or match["state"] not in STATES:
            continue
        desc = match["desc"].strip()
        pid_match = re.search(r"pid (\d+)", desc)
        uptime_match = re.search(r"uptime (.+)$", desc)
        programs.append(ProgramStatus(
            # what supervisord answers is the project user's to say: shown, never obeyed
            name=printable(match["name"]),
            state=match["state"],
            pid=int(pid_match.group(1)) if pid_match else None,
            uptime=uptime_match.group(1).strip() if uptime_match else "",
            description=printable(desc),
        ))
    return programs


def status_command(layout: Layout) -> str:
    """Prints what `supervisorctl status` prints (tasks/scripts/supervisor_status.py), run by
    root with the system's Python; exit status 4 when supervisord does not answer."""
    return root_python("supervisor_status.py", layout.socket)


def status_function(layout: Layout) -> str:
    """lib.sh's shell function `sv_status` (what status_command prints), with the values it
    reads, for a script built here that reads the status more than once (verify_script)."""
    return "\n".join([f"statuspy={cmd(text('supervisor_status.py'))}", f"socket={cmd(layout.socket)}",
                      shell_function("sv_status")])


def supervisorctl(layout: Layout, *args: str) -> str:
    """supervisorctl, a program of the virtualenv: run as the project user, never as root."""
    return cmd("runuser", "-u", layout.project.user, "--", f"{layout.venv_bin}/supervisorctl",
               "-c", layout.supervisord_conf, *args)


def start_direct(layout: Layout) -> str:
    """supervisord without systemd (a container without it as PID 1): as the project user,
    with the directories for its socket and pid file (the unit's RuntimeDirectory= elsewhere)."""
    project = layout.project
    return (cmd("install", "-d", "-o", project.user, "-g", project.group, "-m", "0750", *layout.run_dirs) + " &&\n"
            + cmd("runuser", "-u", project.user, "--", f"{layout.venv_bin}/supervisord", "-c",
                  layout.supervisord_conf))


def plan_supervisord(target: Target, facts: Facts, configs: StepPlan) -> StepPlan:
    """The project's supervisord, its unit enabled, running with what the configs step changed:
    started, restarted, moved from root or handed to systemd when supervisord itself must
    start (SupervisordRunning), else its programs updated, restarted or started
    (ProgramsApplied)."""
    layout = target.layout
    if not target.programs:
        return ok(StepName.SUPERVISORD, "no celery programs on this host")
    changes = configs.configs
    # Debian's root supervisord may have loaded the files an earlier fabcelery kept in conf.d
    dropped = drop_from_system_supervisord(target, facts, changes.moved_out)
    running = SupervisordRunning(target, changes)
    resources = [Custom(f"the system's supervisord ({SYSTEM_SUPERVISORD_CONF})", decide=lambda facts: doing(*dropped))
                 if dropped else None,
                 Unit(layout.unit_name, layout.unit_file, present=True, reload=layout.unit_file in changes.changed),
                 running, ProgramsApplied(target, changes, running)]
    programs = ", ".join(p.name for p in target.programs)
    return plan_resources(StepName.SUPERVISORD, [r for r in resources if r], facts,
                          f"running, programs {programs or 'none'} unchanged")


@dataclass(frozen=True)
class SupervisordRunning:
    """The project's supervisord runs as the project user, under systemd where there is one, with
    its own config as the configs step left it: started when it is not running, restarted when
    its config or unit changed (beyond what reread or daemon-reload apply), handed to systemd
    when it was started by hand, moved from root when an earlier fabcelery ran it as root.
    Each of those starts every program anew (Effect.SUPERVISORD_STARTS)."""

    target: Target
    changes: ConfigChanges
    present: bool = True

    def needs(self) -> ProbeSpec:
        return supervisord_needs(self.target)

    def starts(self, facts: Facts) -> bool:
        return bool(self.diff(facts).actions)

    def diff(self, facts: Facts) -> Diff:
        layout, changes = self.target.layout, self.changes
        unit = layout.unit_name
        moved_note = MOVED_NOTE if changes.moved_out else ""
        if facts.legacy_supervisord:
            return doing(_move_from_root(self.target, facts))
        if facts.systemd and facts.supervisord_running and not facts.service_active(unit):
            # started by hand (the seed's way): handed over to systemd
            return doing(Action(
                "supervisord runs outside systemd: stop it and start it under systemd",
                shut_down(layout) + "\n" + cmd("systemctl", "start", unit), effect=Effect.SUPERVISORD_STARTS,
            ))
        start = cmd("systemctl", "start", unit) if facts.systemd else start_direct(layout)
        if not facts.supervisord_running:
            return doing(Action(f"start supervisord ({unit if facts.systemd else 'no systemd: started directly'})",
                                start, note=moved_note, effect=Effect.SUPERVISORD_STARTS))
        # a unit whose TimeoutStopSec alone changed (a pool's stopwaitsecs) needs daemon-reload only;
        # a supervisord.conf whose [include] alone changed (programs moved out of conf.d), reread only
        changed = set(changes.changed)
        if ((layout.supervisord_conf in changed and changes.main_restart)
                or (layout.unit_file in changed and changes.unit_restart)):
            restart = cmd("systemctl", "restart", unit) if facts.systemd else shut_down(layout) + "\n" + start
            return doing(Action("restart supervisord (its own config changed)", restart, note=moved_note,
                                effect=Effect.SUPERVISORD_STARTS))
        return nothing("supervisord runs with its config")


@dataclass(frozen=True)
class ProgramsApplied:
    """The programs as the configs step left their files, in a supervisord that keeps running:
    reread and updated (only the programs whose file changed restart; a removed one gets a
    warm shutdown first), restarted where settings_local.py changed, started where stopped.
    Nothing when supervisord itself starts (`running`): that applies everything."""

    target: Target
    changes: ConfigChanges
    running: SupervisordRunning
    present: bool = True

    def needs(self) -> ProbeSpec:
        return supervisord_needs(self.target)

    def diff(self, facts: Facts) -> Diff:
        if self.running.starts(facts):
            return nothing("supervisord starts them")
        layout, changes, table = self.target.layout, self.changes, self.target.programs
        ctl = lambda *args: supervisorctl(layout, *args)  # noqa: E731
        changed_programs, added = set(changes.changed_programs), set(changes.added_programs)
        removed = list(changes.removed_programs)
        moved_note = MOVED_NOTE if changes.moved_out else ""
        actions: list[Action] = []
        restarted: set[str] = set()
        # reread: the programs' files changed, or where supervisord.conf includes them from
        if (changed_programs or changes.removed or removed or changes.moved_out
                or layout.supervisord_conf in changes.changed):
            what = ([p for p in sorted(changed_programs) if p not in added] + [f"add {p}" for p in sorted(added)]
                    + [f"stop and remove {p}" for p in removed])
            if moved_note:
                what.append(moved_note + ("" if changed_programs or removed else ": nothing restarts"))
            what = what or ["removed programs" if changes.removed else "its [include]"]
            actions.append(Action(f"reread and update ({', '.join(what)})",
                                  ctl("reread") + " >/dev/null\n" + ctl("update"), note=moved_note))
            restarted = changed_programs
        if layout.settings_local in changes.changed:
            # the workers' hand-back lines alone (tasks/shutdown.py): beat does not run them
            readers = [p.name for p in table if p.is_worker or not changes.settings_workers_only]
            if others := [p for p in readers if p not in restarted]:
                actions.append(Action(f"restart {', '.join(others)} (settings_local.py changed)",
                                      ctl("restart", *others)))
                restarted |= set(others)
        states = {p.name: p.state for p in parse_status(facts.supervisor_status)}
        if stopped := [p.name for p in table if p.name not in restarted and states.get(p.name) not in ("RUNNING",
                                                                                                        "STARTING")]:
            actions.append(Action(f"start {', '.join(stopped)}", ctl("start", *stopped)))
        return doing(*actions) if actions else nothing("every program runs with its files")


def supervisord_absent(target: Target, facts: Facts) -> list:
    """The project's supervisord gone: the program files an earlier fabcelery kept in conf.d
    (and Debian's supervisord told), then its unit stopped (a warm shutdown of every program),
    disabled and removed."""
    layout = target.layout
    # supervisord started without systemd (no systemd as PID 1, or by hand): shut down
    # through its socket, a warm shutdown of its programs, and waited for (bounded)
    outside = facts.supervisord_running and not (facts.systemd and facts.service_active(layout.unit_name))
    stop = "\n".join([
        f"if {pid_alive(layout.supervisord_pid)}; then",
        "  " + shut_down(layout).replace("\n", "\n  "),
        "fi",
    ]) if outside else ""
    return [legacy_programs_absent(target), Unit(layout.unit_name, layout.unit_file, stop=stop)]


def legacy_programs_absent(target: Target) -> Custom:
    """The program files an earlier fabcelery kept in /etc/supervisor/conf.d, removed, and
    dropped by the system's supervisord (Debian's, root) if it loaded them: first, so that
    nothing of the project's runs under any supervisord once the project's own is stopped."""
    layout = target.layout

    def decide(facts: Facts) -> object:
        files = legacy_program_files(target.layout, facts.listings.get(layout.legacy_programs_glob, ()))
        if not files:
            return nothing(f"no program file of the project's in {LEGACY_PROGRAMS_DIR}")
        script = cmd("rm", "-f", "--", *files)
        drop = drop_from_system_supervisord(target, facts, tuple(files))
        what = f"remove {', '.join(path.rpartition('/')[2] for path in files)} from {LEGACY_PROGRAMS_DIR}"
        if drop:
            script += "\n" + drop[0].script
            what += f" and the programs {', '.join(sorted(set(files.values())))} from the system's supervisord"
        return doing(Action(what, script))

    return Custom(f"program files in {LEGACY_PROGRAMS_DIR}",
                  ProbeSpec(listings=(layout.legacy_programs_glob,), paths=(SYSTEM_SUPERVISORD_CONF,)), decide,
                  present=False)


def drop_from_system_supervisord(target: Target, facts: Facts, moved_out: tuple[str, ...]) -> list[Action]:
    """Program files of ours that were in /etc/supervisor/conf.d (removed by the configs step,
    or by an earlier deploy cut off before this step): if Debian's supervisor package is there,
    its root supervisord may have loaded them (at its start, at a reboot). It re-reads its
    config and stops and removes those of our programs that are gone from it -- nothing else
    of its own (tasks/scripts/drop_programs.py, root running the system's Python only)."""
    if not moved_out:
        return []
    state = facts.paths.get(SYSTEM_SUPERVISORD_CONF)
    if state is None or state.kind != "file":
        return []
    names = sorted({name for path in moved_out if (name := legacy_program(target.layout, path))})
    if not names:
        return []
    return [Action(f"the system's supervisord ({SYSTEM_SUPERVISORD_CONF}): stop and remove "
                   f"{', '.join(names)} if it loaded them from {LEGACY_PROGRAMS_DIR}",
                   drop_command(names))]


def drop_command(names: list[str]) -> str:
    return root_python("drop_programs.py", SYSTEM_SUPERVISORD_CONF, *names)


def _move_from_root(target: Target, facts: Facts) -> Action:
    """A supervisord started as root by an earlier fabcelery (its pid file in /run itself):
    stopped with a warm shutdown (TERM: it stops its programs, each waiting for its running
    tasks up to stopwaitsecs), then started as the project user with the new files."""
    layout = target.layout
    unit, user = layout.unit_name, target.inventory.project.user
    # root wrote that pid file, in /run, where only root can: its number can be trusted
    legacy = cmd(layout.legacy_supervisord_pid)
    if facts.systemd and facts.service_active(unit):
        move = cmd("systemctl", "restart", unit)
    else:
        start = cmd("systemctl", "start", unit) if facts.systemd else start_direct(layout)
        move = f'kill -TERM "$(cat {legacy})"\n' + wait_gone(layout.legacy_supervisord_pid) + "\n" + start
    return Action(f"move supervisord from root to {user}: restart it (warm shutdown: running tasks "
                  "finish first)", move, note=f"supervisord moved from root to {user} (warm restart)",
                  effect=Effect.SUPERVISORD_STARTS)


def shut_down(layout: Layout) -> str:
    """supervisord shut down through its socket (a warm shutdown of its programs), and waited for."""
    return supervisorctl(layout, "shutdown") + " >/dev/null\n" + wait_gone(layout.supervisord_pid)


def wait_gone(pidfile: str) -> str:
    """Wait (bounded: 600 s) until the process of that pid file has exited."""
    return f"i=0; while {pid_alive(pidfile)}; do i=$((i+1)); [ $i -gt 1200 ] && exit 1; sleep 0.5; done"


def plan_verify(target: Target, facts: Facts, home: str, anything_changed: bool) -> StepPlan:
    """Wait until every program is RUNNING and every worker answers with its queues (bounded)."""
    table = target.programs
    programs = [p.name for p in table]
    if not programs:
        return ok(StepName.VERIFY, "no celery programs on this host")
    if not anything_changed:
        states = {p.name: p.state for p in parse_status(facts.supervisor_status)}
        if all(states.get(p) == "RUNNING" for p in programs):
            return ok(StepName.VERIFY, f"{', '.join(programs)} RUNNING, nothing changed")
    workers = [p for p in table if p.is_worker]
    answer = answered = ""
    if len(workers) == 1:
        answer, answered = " and the worker to answer ping", " and the worker answers ping"
    elif workers:
        answer = f" and the workers {', '.join(p.name for p in workers)} to answer with their queues"
        answered = " and every worker answers with its queues"
    # a look, not a change: when all is well it is ok, and `changed` counts what changed
    return change(StepName.VERIFY, Action(
        f"wait for {', '.join(programs)} to run{answer}",
        verify_script(target, home, facts.hostname or target.host.name, timeout=120),
    ), looks_only=True, noop=f"{', '.join(programs)} RUNNING{answered}")


def verify_script(target: Target, home: str, hostname: str, timeout: int) -> str:
    """First every program RUNNING (up for startsecs; a FATAL one ends the wait at once),
    then every worker's answer, with the queues it consumes (`celery inspect active_queues
    -d NODE,...`: one Python process that returns as soon as every node named answered, and
    proves each pool consumes exactly its queues). In that order, the celery process (~1 s of
    CPU) runs once the workers are up, not over and over beside workers still starting."""
    layout = target.layout
    table = target.programs
    programs = [p.name for p in table]
    project = target.inventory.project
    logs = " ".join(cmd(p.log) for p in table)
    # read over the socket: supervisorctl would cost 0.2 s of CPU every half second
    check = "sv_status"
    # on failure, first what verify saw per program, in words (tasks/scripts/explain_verify.py)
    seen = [f"{p.name}|{p.node(hostname) if p.is_worker else ''}|"
            f"{(','.join(p.queues) if p.pool.explicit_queues else '*') if p.is_worker else ''}|{p.log}" for p in table]
    lines = [
        status_function(layout),
        f"explain() {{ {{ {check} 2>&1; printf '@@queues\\n%s\\n' \"${{out:-}}\"; }} | "
        f"{root_python('explain_verify.py', *seen)} >&2; }}",
        shell_function("wait_running"),
        f"deadline=$(( $(date +%s) + {int(timeout)} ))",
        f"running=0; wait_running \"$deadline\" {' '.join(cmd(p) for p in programs)} || running=$?",
        'case $running in',
        "  0) ;;",
        "  1) explain; echo 'a program could not be started (FATAL: it exited at every try):' >&2",
        f"     {check} >&2; tail -n 15 {logs} >&2; exit 1 ;;",
        "  3) explain; echo 'supervisord does not know every program:' >&2",
        f"     {check} >&2; exit 1 ;;",
        f"  *) explain; echo 'not every program is RUNNING:' >&2; {check} >&2; tail -n 15 {logs} >&2; exit 1 ;;",
        "esac",
    ]
    workers = [p for p in table if p.is_worker]
    if workers:
        nodes = worker_nodes(workers, hostname)
        queues = cmd("runuser", "-u", project.user, "--", "env", f"HOME={home}", f"{layout.venv_bin}/celery",
                     "-A", target.inventory.celery.app, "--workdir", project.path, "inspect", "active_queues",
                     "-d", ",".join(nodes), "--json", "--timeout", "2")
        # NODE=q1,q2: consumes exactly these; NODE=*: the default pool, on the project's default queue
        expected = [f"{p.node(hostname)}={','.join(p.queues) if p.pool.explicit_queues else '*'}" for p in workers]
        what = "the worker " + nodes[0] if len(nodes) == 1 else "the workers " + ", ".join(nodes)
        lines += [
            f"until out=$({queues} 2>&1) && printf '%s\\n' \"$out\" | {root_python('check_queues.py', *expected)}"
            " >/dev/null; do",
            '  if [ "$(date +%s)" -ge "$deadline" ]; then',
            "    explain",
            f'    echo {cmd(what + " do not answer celery inspect active_queues with their queues:")} >&2',
            '    printf "%s\\n" "$out" | tail -n 5 >&2',
            f"    printf '%s\\n' \"$out\" | {root_python('check_queues.py', *expected)} >&2",
            f"    {check} >&2",
            f"    tail -n 15 {' '.join(cmd(p.log) for p in workers)} >&2",
            "    exit 1",
            "  fi",
            "  sleep 0.5",
            "done",
        ]
    return "\n".join(lines)


def supervisord_needs(target: Target) -> ProbeSpec:
    """What the supervisord and verify steps need to know of a host: the unit, what
    supervisord says of its programs, and its pid files (ours, and an earlier fabcelery's
    root one)."""
    layout = target.layout
    return ProbeSpec(services=(layout.unit_name,), paths=(SYSTEM_SUPERVISORD_CONF,),
                     supervisor_status=(layout.supervisord_conf, status_command(layout)),
                     supervisord_pidfile=layout.supervisord_pid,
                     legacy_supervisord_pidfile=layout.legacy_supervisord_pid)
