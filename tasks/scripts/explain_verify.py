"""Why verify failed, per program, in plain words: run as root by /usr/bin/python3 -I -S (a
system binary) when the deploy's verify gives up (tasks/supervisor.py verify_script).

Arguments: one PROGRAM|NODE|QUEUES|LOG per program (NODE empty for beat; QUEUES a,b or * for
the default pool's queue). Stdin: what supervisord says of its programs, a line `@@queues`,
then what `celery inspect active_queues --json` printed (empty if it was not asked). What it
reads comes from the programs and is only compared and shown, never obeyed; the logs lie in
directories of root's, read without following a link.

Prints one line per program that is not as it should be, the first line all of them.
"""
import os
import re
import sys

from .celery_json import replies

FIX = 'app.config_from_object("django.conf:settings", namespace="CELERY")'
ERROR = re.compile(r"Error|Exception|ERROR|CRITICAL|error:|NOPERM|refused|denied", re.I)
STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")


def plain(text, limit=300):
    text = "".join(c if c >= " " or c == "\t" else f"\\x{ord(c):02x}" for c in text.strip())
    return text if len(text) <= limit else text[:limit] + "..."


def states(status_text):
    found = {}
    for line in status_text.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[1] in STATES:
            found[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return found


def last_error(log_tail):
    lines = [line for line in log_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if ERROR.search(line):
            return plain(line)
    return plain(lines[-1]) if lines else "(the log is empty)"


def permission_problem(log_tail):
    """The setting a broker's permission error points to, in words; "" if there is none."""
    if "NOPERM" in log_tail or "No permissions to access" in log_tail:
        return ("Redis refuses the project's account (NOPERM): the app does not put the key prefix of "
                'settings_local.py in front of its keys (CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]); '
                f"it must read every CELERY_* setting: {FIX}")
    if "ACCESS_REFUSED" in log_tail or re.search(r"access to vhost .* refused", log_tail):
        return ("RabbitMQ refuses the account: the app does not use the project's CELERY_BROKER_URL of "
                f"settings_local.py (its user and vhost); it must read every CELERY_* setting: {FIX}")
    return ""


def explain(programs, status_text, inspect_text, logs):
    """programs: (name, node, queues, log) each; logs: log path -> its last lines. One line per
    program that is not RUNNING and answering with exactly its pool's queues."""
    seen = states(status_text)
    answered = replies(inspect_text) if inspect_text.strip() else None
    lines = []
    for name, node, queues, log in programs:
        tail = logs.get(log, "")
        state, desc = seen.get(name, (None, ""))
        if state is None:
            line = f"{name}: supervisord does not know it"
        elif state == "FATAL":
            line = f"{name}: FATAL (it exited at every start); its log ends: {last_error(tail)}"
        elif state in ("BACKOFF", "EXITED"):
            line = f"{name}: {state} (it exits soon after it starts); its log ends: {last_error(tail)}"
        elif state != "RUNNING":
            line = f"{name}: {state}" + (f" ({plain(desc)})" if desc.strip() else "")
        elif not node or answered is None:
            continue
        elif node not in answered:
            line = f"{name}: RUNNING but {node} does not answer (celery inspect); its log ends: {last_error(tail)}"
        else:
            got = sorted(q.get("name", "?") for q in answered[node] if isinstance(q, dict))
            if queues == "*" or got == sorted(queues.split(",")):
                continue
            line = (f"{name}: {node} answers, but consumes {', '.join(got) or 'nothing'}, not its pool's "
                    f"{queues.replace(',', ', ')}")
        why = permission_problem(tail)
        lines.append(line + (f". {why}" if why else ""))
    return lines


def read_tail(path, size=65536):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    with os.fdopen(fd, "rb") as f:
        f.seek(max(0, os.fstat(fd).st_size - size))
        return f.read().decode("utf-8", "replace")


def main(args):
    programs = [tuple(arg.split("|", 3)) for arg in args]
    status_text, _, inspect_text = sys.stdin.read().partition("@@queues\n")
    logs = {log: read_tail(log) for _, _, _, log in programs}
    lines = explain(programs, status_text, inspect_text, logs)
    if lines:
        print("; ".join(lines) if len(lines) > 1 else lines[0])
        if len(lines) > 1:
            print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
