"""Fleet controls on a real fleet: `fab restart-celery --rolling P%` (a share of the hosts at a
time) and `--max-fail PERCENT` (go on past failed hosts up to that share; 0, the default,
stops at the first).

The fleet: fc-a (Debian 13) runs Redis, a worker and beat; fc-b (Debian 12) and fc-c
(Debian 13) run workers. After the deploy, fc-b's project code is broken on purpose
(its celery app raises at import), so that its worker does not come back from a restart.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Project, install_example_project
from .snapshots import start_deployed

HOSTS = {"fc-a": "trixie", "fc-b": "bookworm", "fc-c": "trixie"}
CTL = "runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c /etc/supervisor/demo_proj-supervisord.conf"
CELERY_APP = "/opt/arches/demo_proj/demo_proj/celery.py"


@pytest.fixture(scope="module")
def controls(fleet, tmp_path_factory):
    """The fleet from snapshots of deployed hosts (this module tests day-two controls, not the
    first deploy), made the module's fleet by its deploy."""
    kinds = {"fc-a": "broker", "fc-b": "worker", "fc-c": "worker"}
    with ThreadPoolExecutor(len(HOSTS)) as pool:
        started = dict(zip(HOSTS, pool.map(lambda item: start_deployed(fleet, *item, kind=kinds[item[0]]),
                                           HOSTS.items()), strict=True))
    for host in started.values():
        install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("controls"), {
        "fc-a": {"roles": ["broker", "worker", "beat"], "internal_address": started["fc-a"].internal_ip},
        "fc-b": {"roles": ["worker"]},
        "fc-c": {"roles": ["worker"]},
    })
    deploy = project.fab("deploy")
    assert deploy.returncode == 0, deploy.output
    fleet.exec("fc-b", f"echo 'raise SystemExit(\"broken on purpose\")' >> {CELERY_APP}")
    yield project
    for host in started.values():
        fleet.remove(host)


def worker_pid(project: Project, host: str) -> int | None:
    out = project.fleet.exec(host, f"LC_ALL=C {CTL} status celery", check=False).stdout.split()
    return int(out[3].rstrip(",")) if len(out) > 3 and out[1] == "RUNNING" else None


def test_max_fail_without_rolling_is_refused_and_nothing_is_restarted(controls):
    before = {host: worker_pid(controls, host) for host in HOSTS}
    run = controls.fab("restart-celery", "--max-fail", "10")
    assert run.returncode == 2, run.output
    assert "--max-fail goes with --rolling" in run.output and "Traceback" not in run.output
    assert {host: worker_pid(controls, host) for host in HOSTS} == before


def test_rolling_by_share_stops_at_the_first_failed_host_by_default(controls):
    untouched = worker_pid(controls, "fc-c")
    run = controls.fab("restart-celery", "--rolling=50%")       # half of 3 hosts: 1 at a time
    assert run.returncode == 1, run.output
    assert "rolling restart, 1 host at a time: fc-a -> fc-b -> fc-c" in run.output
    assert re.search(r"^fc-a\s+restart\s+restarted celery", run.output, re.M), run.output
    assert re.search(r"^fc-b\s+restart\s+failed", run.output, re.M), run.output
    assert "fc-c  restart      skipped: fc-b failed, so the rolling restart stopped (this host was not touched)" \
        in run.output
    assert re.search(r"^fc-c\s+ok=0 changed=0 failed=0\s+\(not restarted: fc-b failed first\)", run.output, re.M)
    assert worker_pid(controls, "fc-c") == untouched


def test_max_fail_lets_the_rolling_restart_go_past_a_failed_host(controls):
    before = worker_pid(controls, "fc-c")
    run = controls.fab("restart-celery", "--rolling=34%", "--max-fail", "40")   # 1 of 3 hosts is 33%
    assert run.returncode == 1, run.output                                      # a host failed: exit 1
    assert "rolling restart, 1 host at a time: fc-a -> fc-b -> fc-c" in run.output
    assert re.search(r"^fc-b\s+restart\s+failed", run.output, re.M), run.output
    assert re.search(r"^fc-c\s+restart\s+restarted celery", run.output, re.M), run.output
    assert re.search(r"^fc-c\s+ok=\d+ changed=1 failed=0", run.output, re.M), run.output
    after = worker_pid(controls, "fc-c")
    assert after and after != before
