"""Least privilege on real servers: root runs nothing the project user can change, and
follows no link that user could have planted (issue 10).

Code planted in the virtualenv as the project user records every run; deploy, status,
restart, ping, logs, start, stop, shutdown and a reboot must never run it as root. A
link in place of settings_local.py is refused. A server deployed by the version before
this model (supervisord as root) is moved over with a task running across the move.
"""

from __future__ import annotations

import re
import time

import pytest

from .conftest import SUITES, Project, earlier_fabcelery, install_example_project, server, wait_for

VENV = "/opt/arches/venv"
SETTINGS = "/opt/arches/demo_proj/demo_proj/settings_local.py"
RUNS = "/var/tmp/venv-runs.log"
# The last commit whose supervisord ran as root (the layout this model replaces).
LEGACY_COMMIT = "e55a12819e975da42d8e2f56966c414497666028"

# Planted by the project user: every start of the virtualenv's Python records who ran it,
# also with -I -S (bin/python3 itself is replaced), and every site-enabled start once more.
PLANT = f"""
set -e
cd {VENV}
rm bin/python3
printf '%s\\n' '#!/bin/bash' 'echo "$(id -u) $0 ${{1:0:60}} ${{2:0:60}}" >> {RUNS}' \\
    'exec -a "$0" /usr/bin/python3 "$@"' > bin/python3
chmod 755 bin/python3
site=$(ls -d lib/python3*/site-packages)
printf '%s\\n' "import os, sys; open('{RUNS}', 'a').write(f'{{os.getuid()}} site {{sys.argv[0][:60]}}\\\\n')" \\
    > "$site/zz-planted.pth"
"""


def sh(fleet, host, command: str, check: bool = True, user: str = "root") -> str:
    return fleet.exec(host, command, check=check, user=user).stdout.strip()


@pytest.fixture(scope="module", params=list(SUITES))
def deployed(request, fleet, tmp_path_factory):
    suite = request.param
    name = f"priv{SUITES[suite][-2:]}"
    host = fleet.start(name, suite=suite)
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    first = project.fab("-H", name, "deploy")
    assert first.returncode == 0, first.output
    yield {"fleet": fleet, "host": host, "name": name, "project": project, "server": server(fleet, host)}
    fleet.remove(host)


def test_supervisord_runs_as_the_project_user_with_a_private_socket(deployed):
    fleet, host, srv = deployed["fleet"], deployed["host"], deployed["server"]
    users = sh(fleet, host, "ps -o user= -C supervisord").split()
    assert users == ["arches"]
    assert srv.file("/etc/systemd/system/demo_proj-supervisord.service").contains("^User=arches$")
    sock = srv.file("/run/demo_proj-supervisor/supervisor.sock")
    assert sock.is_socket and (sock.user, sock.mode) == ("arches", 0o700)
    directory = srv.file("/run/demo_proj-supervisor")
    assert (directory.user, directory.group, directory.mode) == ("arches", "arches", 0o750)
    # another local user cannot talk to it
    other = fleet.exec(host, "python3 -c 'import socket; s=socket.socket(socket.AF_UNIX);"
                             " s.connect(\"/run/demo_proj-supervisor/supervisor.sock\")'", user="nobody", check=False)
    assert other.returncode != 0 and "Permission denied" in other.stderr


def test_code_planted_in_the_virtualenv_never_runs_as_root(deployed):
    fleet, host, name, project = deployed["fleet"], deployed["host"], deployed["name"], deployed["project"]
    sh(fleet, host, f"install -m 0666 /dev/null {RUNS}")
    sh(fleet, host, PLANT, user="arches")
    # a change, so that the deploy validates, applies and verifies (reread/update, restart, ping)
    project.data["celery"]["concurrency"] = 3
    project.write()
    runs = [project.fab("deploy"), project.fab("status"), project.fab("restart-celery"), project.fab("ping"),
            project.fab("logs", "--lines", "5"), project.fab("stop-celery"), project.fab("start-celery"),
            project.fab("shutdown"), project.fab("start-celery"), project.fab("deploy", "--dry-run")]
    assert [r.returncode for r in runs] == [0] * len(runs), "\n".join(r.output for r in runs)
    assert runs[0].recap()[name]["changed"] >= 2       # configs, supervisord (verify looks)
    fleet.restart(host)                       # a reboot: systemd starts supervisord
    assert wait_for(lambda: project.fab("status").returncode == 0, timeout=90), "not back after the reboot"
    assert project.fab("deploy").recap()[name] == {"ok": 7, "changed": 0, "failed": 0}
    record = sh(fleet, host, f"cat {RUNS}").splitlines()
    uid = sh(fleet, host, "id -u arches")
    assert [line for line in record if not line.startswith(f"{uid} ")] == []   # never root, nobody else
    # and the plant did run: the validator, supervisorctl, the worker, ping and supervisord after the boot
    text = "\n".join(record)
    for what in ("Is a staged supervisor config", "supervisorctl", "bin/celery", "bin/supervisord"):
        assert what in text, (what, text[-3000:])


def test_a_link_in_place_of_settings_local_is_refused_and_nothing_changes(deployed):
    fleet, host, name, project = deployed["fleet"], deployed["host"], deployed["name"], deployed["project"]
    # as in an Arches install, the project user owns the project's code, and plants a link
    sh(fleet, host, "chown -R arches:arches /opt/arches/demo_proj")
    sh(fleet, host, f"mv {SETTINGS} {SETTINGS}.real && ln -s /etc/shadow {SETTINGS}", user="arches")
    shadow = sh(fleet, host, "stat -c '%U %G %a %s %Y' /etc/shadow")
    before = sh(fleet, host, "find /etc /opt/arches /var/lib/fabcelery -xdev -newer /etc/hostname -printf '%p %s\\n'"
                             " | sort")
    project.data["celery"]["concurrency"] = 4        # something to do, so the deploy would write
    project.write()
    try:
        run = project.fab("-H", name, "deploy")
        assert run.returncode == 1, run.output
        assert (f"{name}  configs      failed: {SETTINGS} is a symbolic link: fabcelery writes its block only into "
                "a regular file and never through a link") in run.output
        assert "(nothing was changed)" in run.output
        assert sh(fleet, host, "stat -c '%U %G %a %s %Y' /etc/shadow") == shadow
        assert sh(fleet, host, "find /etc /opt/arches /var/lib/fabcelery -xdev -newer /etc/hostname "
                               "-printf '%p %s\\n' | sort") == before
        # no root-only line reached anything the project user can read
        leaked = fleet.exec(host, "grep -rls '^root:' /opt/arches /var/log/celery /var/lib/celery /tmp /var/tmp",
                            user="arches", check=False)
        assert leaked.stdout.strip() == "", leaked.stdout
        assert "--concurrency=4" not in srv_conf(deployed)
    finally:
        sh(fleet, host, f"rm -f {SETTINGS} && mv {SETTINGS}.real {SETTINGS}", user="arches")
    # the file itself back in place: the deploy goes on, and writes the user's file as a regular file
    again = project.fab("-H", name, "deploy")
    assert again.returncode == 0, again.output
    assert "--concurrency=4" in srv_conf(deployed)
    assert sh(fleet, host, f"stat -c '%F %U %G %a' {SETTINGS}") == "regular file arches arches 640"


def srv_conf(deployed) -> str:
    return deployed["server"].file("/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf").content_string


def test_a_host_not_in_the_inventory_is_refused_before_any_connection(deployed):
    fleet, host, name, project = deployed["fleet"], deployed["host"], deployed["name"], deployed["project"]
    sessions = "journalctl -q -u ssh --no-pager | grep -c 'Accepted publickey' || true"
    before = sh(fleet, host, sessions)
    run = project.fab("-H", f"{name}x", "deploy")       # a typo of the real name
    assert run.returncode == 2
    assert (f"{project.inventory_path}: -H {name}x is not a host of this inventory, whose hosts are {name}. "
            in run.output) and "nothing was changed" in run.output
    assert "Traceback" not in run.output and "probe" not in run.output
    time.sleep(1)
    assert sh(fleet, host, sessions) == before


# --- a server deployed by the version whose supervisord ran as root ----------------------


@pytest.fixture(scope="module")
def legacy(fleet, tmp_path_factory):
    """A Debian 12 server deployed by fabcelery as it was before this model (root supervisord)."""
    tree = earlier_fabcelery(LEGACY_COMMIT, tmp_path_factory)
    host = fleet.start("legacy12", suite="bookworm")
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("legacy12"), {"legacy12": {"roles": ["broker", "worker",
                                                                                          "beat"]}})
    old = project.fab("-H", "legacy12", "deploy", root=tree)
    assert old.returncode == 0, old.output
    yield {"fleet": fleet, "host": host, "project": project, "server": server(fleet, host)}
    fleet.remove(host)


def test_a_root_supervisord_is_moved_to_the_project_user_and_a_running_task_finishes(legacy):
    fleet, host, project = legacy["fleet"], legacy["host"], legacy["project"]
    assert sh(fleet, host, "ps -o user= -C supervisord") == "root"     # the layout being replaced
    assert legacy["server"].file("/run/demo_proj-supervisor.sock").is_socket
    # The move changes the Redis account too (issue 10: every project authenticates), so a
    # caller connected before it cannot fetch a result after it; the task shows its end on
    # the host instead (~arches/TOKEN), with no result backend involved.
    token = "moved-" + str(time.time_ns())
    sh(fleet, host, f"cd /opt/arches/demo_proj && runuser -u arches -- {VENV}/bin/python -c "
                    "'import sys; from demo_proj.celery import app; "
                    "app.send_task(\"demo_proj.tasks.sleep_then_touch\", args=[10, sys.argv[1]])' " + token)
    log = "/var/log/celery/demo_proj-worker.log"
    assert wait_for(lambda: "sleep_then_touch" in sh(fleet, host, f"grep received {log} || true"), 30), \
        "the worker never received the task"
    run = project.fab("-H", "legacy12", "deploy")
    assert run.returncode == 0, run.output
    assert wait_for(lambda: sh(fleet, host, f"test -s /home/arches/{token} && echo done", check=False), 60), \
        "the task did not finish"
    assert "legacy12  supervisord  move supervisord from root to arches: restart it (warm shutdown" in run.output
    assert re.search(r"^legacy12\s+ok=\d+ changed=\d+ failed=0  \(supervisord moved from root to arches "
                     r"\(warm restart\)\)$", run.output, re.M), run.output
    # the worker had the task when the move stopped it: a warm shutdown after the task was received,
    # and the task still ran to its end (its file, written after its 10 s sleep)
    worker_log = sh(fleet, host, f"cat {log}")
    received = worker_log.index("demo_proj.tasks.sleep_then_touch[")
    assert "Warm shutdown" in worker_log[received:], worker_log
    ended = int(sh(fleet, host, f"cat /home/arches/{token}"))
    assert ended >= int(sh(fleet, host, f"stat -c %Y {log}")) - 120   # written during this test
    assert sh(fleet, host, "ps -o user= -C supervisord") == "arches"
    assert not legacy["server"].file("/run/demo_proj-supervisor.sock").exists
    again = project.fab("-H", "legacy12", "deploy")
    assert again.recap()["legacy12"] == {"ok": 7, "changed": 0, "failed": 0}, again.output
    assert "moved" not in again.output
