"""Debian's own `supervisor` package on the server: a root supervisord that includes
/etc/supervisor/conf.d/*.conf. It must never load (and run) fabcelery's programs.

- Installed before the first deploy, with a program of its own: through the deploy, a
  reboot, `fab status` and `fab undeploy --purge`, Debian's supervisord runs only its own
  program (under the same pid throughout the deploy), root's `supervisorctl` (Debian's,
  the README's advice) shows the project's programs, and no process from the project's
  virtualenv ever runs as root (a watcher on the server samples `ps` all along).
- A server deployed by the version before the move (commit 02e0fbe: program files in
  conf.d), where Debian's supervisord, installed afterwards, loaded them: the next deploy
  moves the files out, restarts none of the project's programs, makes Debian's
  supervisord drop its copies (and only those), says so; the deploy after is changed=0.
"""

from __future__ import annotations

import pytest

from .conftest import Project, earlier_fabcelery, install_example_project, server, wait_for

BEFORE_MOVE = "02e0fbe6f0e36c4ae772a99524e015fa11b31471"    # program files in /etc/supervisor/conf.d
PROGRAMS = "/etc/supervisor/demo_proj-programs.d"
CTL = "runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c /etc/supervisor/demo_proj-supervisord.conf"
OTHER = "[program:other]\ncommand=sleep infinity\nautostart=true\n"
# every process run from the project's virtualenv (celery worker, its pool, beat, supervisord)
# as root, sampled every 0.2 s: one line each, and a tick per sample in another file
WATCHER = """#!/bin/sh
while :; do
  ps -eo user=,pid=,args= | awk '$1 == "root" && $3 ~ /^\\/opt\\/arches\\/venv\\//' >> /root/venv-as-root
  echo tick >> /root/watch-ticks
  sleep 0.2
done
"""


def install_debian_supervisor(fleet, host) -> None:
    """Debian's package, with a program of its own in conf.d (there before it starts)."""
    fleet.exec(host, "mkdir -p /etc/supervisor/conf.d && cat > /etc/supervisor/conf.d/other.conf", input=OTHER)
    fleet.exec(host, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq supervisor "
                     ">/dev/null", timeout=600)
    assert wait_for(lambda: debian_programs(server(fleet, host)).get("other", ("",))[0] == "RUNNING", 30)


def debian_programs(srv) -> dict[str, tuple[str, int | None]]:
    """What Debian's supervisord runs: {name: (state, pid)}, through its own supervisorctl."""
    out = srv.check_output("LC_ALL=C supervisorctl status || true")
    programs = {}
    for parts in (line.split() for line in out.splitlines()):
        if len(parts) >= 2 and parts[1].isupper():
            pid = int(parts[3].rstrip(",")) if len(parts) >= 4 and parts[2] == "pid" else None
            programs[parts[0]] = (parts[1], pid)
    return programs


def debian_supervisord_pid(srv) -> int:
    return int(srv.check_output("cat /run/supervisord.pid"))


def children(srv, pid: int) -> list[str]:
    return srv.check_output(f"ps --ppid {pid} -o args=").splitlines()


def ours(srv) -> dict[str, tuple[str, int | None]]:
    """The project's programs, through root's supervisorctl (Debian's) and the project's config."""
    out = srv.check_output("LC_ALL=C supervisorctl -c /etc/supervisor/demo_proj-supervisord.conf status || true")
    return {p[0]: (p[1], int(p[3].rstrip(",")) if len(p) >= 4 and p[2] == "pid" else None)
            for p in (line.split() for line in out.splitlines()) if len(p) >= 2}


def start_watcher(fleet, host) -> None:
    fleet.exec(host, "cat > /root/watch-venv-as-root.sh", input=WATCHER)
    fleet.exec(host, "systemd-run --quiet --unit=watch-venv-as-root /bin/sh /root/watch-venv-as-root.sh")


def ticks(srv) -> int:
    return len(srv.check_output("cat /root/watch-ticks 2>/dev/null || true").splitlines())


def as_root(srv) -> str:
    """What the watcher saw run as root from the virtualenv (empty: nothing, ever), and now."""
    now = srv.check_output("ps -eo user=,pid=,args= | awk '$1 == \"root\" && $3 ~ /^\\/opt\\/arches\\/venv\\//'")
    return srv.check_output("cat /root/venv-as-root 2>/dev/null || true") + now


def celery_processes(srv) -> str:
    return srv.check_output("ps -eo user=,pid=,args= | awk '$3 ~ /^\\/opt\\/arches\\/venv\\//' ")


@pytest.fixture(scope="module", params=["trixie", "bookworm"])
def debian(request, fleet, tmp_path_factory):
    suite = request.param
    name = f"dsv-{suite[:3]}"
    host = fleet.start(name, suite=suite)
    install_example_project(fleet, host)
    install_debian_supervisor(fleet, host)
    srv = server(fleet, host)
    start_watcher(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    state = {"fleet": fleet, "host": host, "name": name, "srv": srv, "project": project,
             "pid": debian_supervisord_pid(srv), "other": debian_programs(srv)["other"]}
    state["deploy"] = project.fab("-H", name, "deploy")
    yield state
    fleet.remove(host)


def test_the_deploy_leaves_debians_supervisord_and_its_program_alone(debian):
    srv, run = debian["srv"], debian["deploy"]
    assert run.returncode == 0, run.output
    assert debian_supervisord_pid(srv) == debian["pid"]
    assert debian_programs(srv) == {"other": debian["other"]}          # its own program, same pid
    assert children(srv, debian["pid"]) == ["sleep infinity"]
    assert srv.check_output("ls -A /etc/supervisor/conf.d") == "other.conf"
    assert sorted(srv.check_output(f"ls -A {PROGRAMS}").split()) == ["demo_proj-celerybeat.conf",
                                                                      "demo_proj-celeryd.conf"]
    assert srv.file(PROGRAMS).user == "root" and srv.file(PROGRAMS).mode == 0o755
    assert "program files moved" not in run.output


def test_roots_supervisorctl_from_debians_package_shows_the_projects_programs(debian):
    # the README's advice: `sudo supervisorctl -c /etc/supervisor/NAME-supervisord.conf status`
    programs = ours(debian["srv"])
    assert {name: state for name, (state, _) in programs.items()} == {"celery": "RUNNING", "celerybeat": "RUNNING"}


def test_after_a_reboot_debians_supervisord_runs_only_its_own_program(debian):
    fleet, srv = debian["fleet"], debian["srv"]
    fleet.restart(debian["host"])
    start_watcher(fleet, debian["host"])
    assert wait_for(lambda: {s for s, _ in ours(srv).values()} == {"RUNNING"}, 60), ours(srv)
    assert wait_for(lambda: debian_programs(srv).get("other", ("",))[0] == "RUNNING", 30)
    pid = debian_supervisord_pid(srv)
    assert set(debian_programs(srv)) == {"other"}
    assert children(srv, pid) == ["sleep infinity"]
    debian["pid"], debian["other"] = pid, debian_programs(srv)["other"]


def test_status_after_the_reboot_is_healthy(debian):
    run = debian["project"].fab("-H", debian["name"], "status")
    assert run.returncode == 0, run.output
    assert debian_programs(debian["srv"]) == {"other": debian["other"]}


def test_undeploy_purge_leaves_nothing_of_ours_running_and_debians_supervisor_intact(debian):
    srv = debian["srv"]
    run = debian["project"].fab("-H", debian["name"], "undeploy", "--purge")
    assert run.returncode == 0, run.output
    assert celery_processes(srv) == ""
    assert debian_supervisord_pid(srv) == debian["pid"]
    assert debian_programs(srv) == {"other": debian["other"]}
    assert srv.check_output("ls -A /etc/supervisor/conf.d") == "other.conf"
    assert srv.file("/etc/supervisor/supervisord.conf").exists
    assert not srv.file(PROGRAMS).exists
    assert srv.package("supervisor").is_installed                    # not fabcelery's to purge


def test_nothing_from_the_virtualenv_ran_as_root_at_any_point(debian):
    srv = debian["srv"]
    assert ticks(srv) > 50              # the watcher did sample, all along
    assert as_root(srv) == ""


@pytest.fixture(scope="module")
def upgraded(fleet, tmp_path_factory):
    """Deployed by the version before the move; then Debian's supervisor installed, whose
    supervisord loads the project's programs from conf.d at its start."""
    tree = earlier_fabcelery(BEFORE_MOVE, tmp_path_factory)
    name = "dsv-up"
    host = fleet.start(name, suite="trixie")
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    old = project.fab("-H", name, "deploy", root=tree)
    assert old.returncode == 0, old.output
    srv = server(fleet, host)
    assert sorted(srv.check_output("ls -A /etc/supervisor/conf.d").split()) == ["demo_proj-celerybeat.conf",
                                                                               "demo_proj-celeryd.conf"]
    install_debian_supervisor(fleet, host)
    yield {"fleet": fleet, "host": host, "name": name, "srv": srv, "project": project}
    fleet.remove(host)


def test_the_next_deploy_moves_the_files_and_debians_supervisord_drops_its_copies(upgraded):
    """The move restarts nothing; the worker restarts once (warm), as it gains the hand-back of
    its running tasks with the demo project's Celery 5.6.3 (tasks/shutdown.py); beat does not."""
    srv, project, name = upgraded["srv"], upgraded["project"], upgraded["name"]
    # what the issue saw: Debian's supervisord took the project's programs from conf.d
    assert wait_for(lambda: {"celery", "celerybeat", "other"} <= set(debian_programs(srv)), 30), debian_programs(srv)
    debian_pid, other = debian_supervisord_pid(srv), debian_programs(srv)["other"]
    before = {p: pid for p, (state, pid) in ours(srv).items()}
    worker = before["celery"]
    supervisord = srv.check_output("cat /run/demo_proj-supervisor/supervisord.pid")
    run = project.fab("-H", name, "deploy")
    assert run.returncode == 0, run.output
    assert f"{name}  configs      install demo_proj-supervisord.conf, demo_proj-celeryd.conf, " \
           "demo_proj-celerybeat.conf, demo_proj-supervisord.service, settings_local.py\n" in run.output
    assert "remove demo_proj-celerybeat.conf, demo_proj-celeryd.conf from /etc/supervisor/conf.d" in run.output
    assert ("reread and update (celery, program files moved out of /etc/supervisor/conf.d)\n"
            in run.output)
    assert "settings_local.py changed" not in run.output
    assert "(program files moved out of /etc/supervisor/conf.d)" in run.output.split("RECAP")[1]
    # Debian's supervisord: the project's programs gone, its own program as it was
    assert debian_supervisord_pid(srv) == debian_pid
    assert debian_programs(srv) == {"other": other}
    assert children(srv, debian_pid) == ["sleep infinity"]
    assert srv.check_output("ls -A /etc/supervisor/conf.d") == "other.conf"
    # the project's supervisord and beat: never restarted; the worker once, for the hand-back
    assert srv.check_output("cat /run/demo_proj-supervisor/supervisord.pid") == supervisord
    after = ours(srv)
    assert after["celery"][0] == "RUNNING" and after["celery"][1] != worker
    worker = after["celery"][1]
    assert after["celerybeat"] == ("RUNNING", before["celerybeat"])
    again = project.fab("-H", name, "deploy")
    assert again.recap()[name] == {"ok": 7, "changed": 0, "failed": 0}, again.output
    assert ours(srv)["celery"] == ("RUNNING", worker)
