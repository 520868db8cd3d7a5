"""supervisord: the systemd unit that starts it at boot, applying changed programs
(reread/update, so only they restart), and reading `supervisorctl status`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .inventory import HostSpec, Inventory
from .layout import Layout
from .plan import Action, StepPlan, change, ok
from .probe import Facts
from .shell import cmd

# supervisorctl status: "name  STATE  description", name may be "group:name"
STATUS_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\b\s*(?P<desc>.*)$")
STATES = {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN"}


# supervisorctl status, without supervisorctl: the same XML-RPC call
# (supervisor.getAllProcessInfo) over the control socket, printed as supervisorctl
# prints it. supervisorctl imports all of supervisor and costs about 0.2 s of CPU;
# Python with xmlrpc.client 0.09 s; this, with only the built-in _socket and string
# methods, 0.02 s: it is most of what `fab status` and the deploy's probe cost a server (bench/RESULTS.md).
# tests/unit/test_operations.py checks it against supervisorctl and a real supervisord.
STATUS_SCRIPT = r"""
import _socket, sys
path = sys.argv[1]
call = (b"<?xml version='1.0'?><methodCall><methodName>supervisor.getAllProcessInfo</methodName>"
        b"<params></params></methodCall>")
try:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(call) + call)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except FileNotFoundError:
    print("unix://%s no such file" % path); sys.exit(4)
except ConnectionRefusedError:
    print("unix://%s refused connection" % path); sys.exit(4)
except OSError as exc:
    print("error: %s" % exc); sys.exit(4)
head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
if " 200 " not in head.split("\r\n")[0] or "<fault>" in body or "<struct>" not in body + "<struct>":
    print("error: supervisord answered %r" % (head.split("\r\n")[0] + body)[:300]); sys.exit(4)
def text(value):
    if value.startswith("<") and not value.startswith("</"):
        value = value[value.index(">") + 1:value.rindex("</")] if "</" in value else ""
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        value = value.replace(entity, char)
    return value
for struct in body.split("<struct>")[1:]:
    info = {}
    for member in struct.split("</struct>")[0].split("<member>")[1:]:
        name = member.split("<name>", 1)[1].split("</name>", 1)[0]
        info[name] = text(member.split("<value>", 1)[1].rsplit("</value>", 1)[0])
    name = info["name"] if info["group"] == info["name"] else "%s:%s" % (info["group"], info["name"])
    print("%-32s %-9s %s" % (name, info["statename"], info["description"]))
"""


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
            name=match["name"],
            state=match["state"],
            pid=int(pid_match.group(1)) if pid_match else None,
            uptime=uptime_match.group(1).strip() if uptime_match else "",
            description=desc,
        ))
    return programs


def programs_for(host: HostSpec) -> list[str]:
    return (["celery"] if host.has("worker") else []) + (["celerybeat"] if host.has("beat") else [])


def status_command(layout: Layout) -> str:
    """Prints what `supervisorctl status` prints (see STATUS_SCRIPT); exit status 4 when
    supervisord does not answer."""
    return cmd(f"{layout.venv_bin}/python", "-I", "-S", "-c", STATUS_SCRIPT, layout.socket)


def supervisorctl(layout: Layout, *args: str) -> str:
    return cmd(f"{layout.venv_bin}/supervisorctl", "-c", layout.supervisord_conf, *args)


def plan_supervisord(inventory: Inventory, host: HostSpec, facts: Facts, configs: StepPlan) -> StepPlan:
    layout = Layout(inventory.project)
    if not programs_for(host):
        return ok("supervisord", "no celery programs on this host")
    unit = layout.unit_name
    changed = set(configs.data.get("changed", ()))
    changed_programs = set(configs.data.get("changed_programs", ()))
    programs = programs_for(host)
    actions: list[Action] = []
    ctl = lambda *args: supervisorctl(layout, *args)  # noqa: E731

    main_changed = layout.supervisord_conf in changed or layout.unit_file in changed
    programs_changed = bool(changed_programs or configs.data.get("removed"))
    settings_changed = layout.settings_local in changed

    if facts.systemd:
        if layout.unit_file in changed:
            actions.append(Action("systemctl daemon-reload", "systemctl daemon-reload", quick=True))
        if not facts.service_enabled(unit):
            actions.append(Action(f"enable {unit} (starts at boot)", cmd("systemctl", "enable", "--quiet", unit),
                                  quick=True))
        if facts.supervisord_running and not facts.service_active(unit):
            # Started by hand (the seed's way): hand it over to systemd.
            actions.append(Action(
                "supervisord runs outside systemd: stop it and start it under systemd",
                ctl("shutdown") + " >/dev/null\n" + _wait_gone(layout) + "\n" + cmd("systemctl", "start", unit),
            ))
            return change("supervisord", *actions)
        start, restart = cmd("systemctl", "start", unit), cmd("systemctl", "restart", unit)
    else:
        start = cmd(f"{layout.venv_bin}/supervisord", "-c", layout.supervisord_conf)
        restart = ctl("shutdown") + " >/dev/null\n" + _wait_gone(layout) + "\n" + start

    if not facts.supervisord_running:
        actions.append(Action(f"start supervisord ({unit if facts.systemd else 'no systemd: started directly'})",
                              start))
        return change("supervisord", *actions)
    if main_changed:
        actions.append(Action("restart supervisord (its own config changed)", restart))
        return change("supervisord", *actions)
    restarted: set[str] = set()
    if programs_changed:
        actions.append(Action(
            f"reread and update ({', '.join(sorted(changed_programs)) or 'removed programs'})",
            ctl("reread") + " >/dev/null\n" + ctl("update"),
        ))
        restarted = changed_programs
    if settings_changed:
        others = [p for p in programs if p not in restarted]
        if others:
            actions.append(Action(f"restart {', '.join(others)} (settings_local.py changed)", ctl("restart", *others)))
            restarted |= set(others)
    states = {p.name: p.state for p in parse_status(facts.supervisor_status)}
    stopped = [p for p in programs if p not in restarted and states.get(p) not in ("RUNNING", "STARTING")]
    if stopped:
        actions.append(Action(f"start {', '.join(stopped)}", ctl("start", *stopped)))
    if not actions:
        return ok("supervisord", f"running, programs {', '.join(programs) or 'none'} unchanged")
    return change("supervisord", *actions)


def _wait_gone(layout: Layout) -> str:
    pidfile = cmd(layout.supervisord_pid)
    return (f"i=0; while [ -s {pidfile} ] && kill -0 \"$(cat {pidfile})\" 2>/dev/null; do "
            "i=$((i+1)); [ $i -gt 1200 ] && exit 1; sleep 0.5; done")


# Runs in the remote virtualenv's Python: supervisor's own parser decides whether a
# config is valid, before it replaces the live one.
VALIDATOR = r"""
import os, sys, tempfile
from supervisor.options import ServerOptions
failed = False
for arg in sys.argv[1:]:
    kind, _, path = arg.partition(":")
    wrapper = None
    try:
        if kind == "programs":
            # a conf.d file is only a fragment: check it inside a minimal main config
            fd, wrapper = tempfile.mkstemp(suffix=".conf")
            with os.fdopen(fd, "w") as f:
                f.write("[supervisord]\n[include]\nfiles = %s\n" % path)
            target = wrapper
        else:
            target = path
        options = ServerOptions()
        options.configfile = target
        options.process_config(do_usage=False)
    except (ValueError, OSError) as exc:
        failed = True
        print("%s: %s" % (path, exc), file=sys.stderr)
    finally:
        if wrapper:
            os.unlink(wrapper)
sys.exit(1 if failed else 0)
"""


def validate_command(python: str, checks: list[tuple[str, str]]) -> str:
    """checks: (kind, path), kind 'main' or 'programs'."""
    return cmd(python, "-c", VALIDATOR, *[f"{kind}:{path}" for kind, path in checks])


def plan_verify(inventory: Inventory, host: HostSpec, facts: Facts, home: str, anything_changed: bool) -> StepPlan:
    """Wait until the worker answers ping and every program is RUNNING (bounded)."""
    from .configs import node_name

    programs = programs_for(host)
    if not programs:
        return ok("verify", "no celery programs on this host")
    if not anything_changed:
        states = {p.name: p.state for p in parse_status(facts.supervisor_status)}
        if all(states.get(p) == "RUNNING" for p in programs):
            return ok("verify", f"{', '.join(programs)} RUNNING, nothing changed")
    return change("verify", Action(
        f"wait for {', '.join(programs)} to run" + (" and the worker to answer ping" if host.has("worker") else ""),
        verify_script(inventory, host, home, node_name(facts.hostname or host.name), timeout=120),
    ))


def verify_script(inventory: Inventory, host: HostSpec, home: str, node: str, timeout: int) -> str:
    """First every program RUNNING (up for startsecs; a FATAL one ends the wait at once),
    then the worker's answer to ping. In that order, the ping (a Python process of its own,
    ~1 s of CPU) runs once the worker is up, not over and over beside a worker still starting."""
    layout = Layout(inventory.project)
    programs = programs_for(host)
    project = inventory.project
    logs = " ".join(cmd(log) for log in ([layout.worker_log] if host.has("worker") else [])
                    + ([layout.beat_log] if host.has("beat") else []))
    # read over the socket: supervisorctl would cost 0.2 s of CPU every half second
    check = status_command(layout)
    names = "(" + "|".join(programs) + ")"
    lines = [
        f"deadline=$(( $(date +%s) + {int(timeout)} ))",
        f"until [ \"$({check} 2>/dev/null | grep -cE {cmd('^' + names + ' +RUNNING ')})\" -eq {len(programs)} ]; do",
        f"  if {check} 2>/dev/null | grep -qE {cmd('^' + names + ' +FATAL ')}; then",
        f"    echo 'a program could not be started (FATAL: it exited at every try):' >&2; {check} >&2",
        f"    tail -n 15 {logs} >&2; exit 1",
        "  fi",
        '  if [ "$(date +%s)" -ge "$deadline" ]; then',
        f"    echo 'not every program is RUNNING:' >&2; {check} >&2; tail -n 15 {logs} >&2; exit 1",
        "  fi",
        "  sleep 0.5",
        "done",
    ]
    if host.has("worker"):
        ping = cmd("runuser", "-u", project.user, "--", "env", f"HOME={home}", f"{layout.venv_bin}/celery",
                   "-A", inventory.celery.app, "--workdir", project.path, "inspect", "ping", "-d", node,
                   "--timeout", "2")
        lines += [
            f"until out=$({ping} 2>&1); do",
            '  if [ "$(date +%s)" -ge "$deadline" ]; then',
            f'    echo "the worker {node} does not answer celery inspect ping:" >&2',
            '    printf "%s\\n" "$out" | tail -n 5 >&2',
            f"    {check} >&2",
            f"    tail -n 15 {cmd(layout.worker_log)} >&2",
            "    exit 1",
            "  fi",
            "  sleep 0.5",
            "done",
        ]
    return "\n".join(lines)
