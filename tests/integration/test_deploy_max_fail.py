"""`fab deploy --max-fail PERCENT` on a real fleet: once more hosts have failed than that share of
the fleet (0: the first), no further host is started, and the recap names the hosts left
untouched; without it every host is deployed.

The fleet: three bare Debian 13 hosts with the example project's code; mf-b's settings_local.py
is a directory, so that its deploy fails before it changes anything (its plan is refused).
Dry runs, one host at a time (--parallel 1, inventory order): what is tested is which hosts are
started, not the deploy itself.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Project, install_example_project

HOSTS = ("mf-a", "mf-b", "mf-c")
SETTINGS = "/opt/arches/demo_proj/demo_proj/settings_local.py"


@pytest.fixture(scope="module")
def project(fleet, tmp_path_factory):
    with ThreadPoolExecutor(len(HOSTS)) as pool:
        started = dict(zip(HOSTS, pool.map(lambda name: fleet.start(name, "trixie"), HOSTS), strict=True))
    for host in started.values():
        install_example_project(fleet, host)
    fleet.exec("mf-b", f"rm -f {SETTINGS} && mkdir {SETTINGS}")
    yield Project(fleet, tmp_path_factory.mktemp("max-fail"), {
        "mf-a": {"roles": ["broker", "worker", "beat"], "internal_address": started["mf-a"].internal_ip},
        "mf-b": {"roles": ["worker"]},
        "mf-c": {"roles": ["worker"]},
    })
    for host in started.values():
        fleet.remove(host)


def logins(project: Project, host: str) -> int:
    """sshd's accepted logins on the host so far."""
    out = project.fleet.exec(host, "journalctl -q -o cat -t sshd -t sshd-session | grep -c '^Accepted' || true")
    return int(out.stdout.strip() or 0)


def test_max_fail_0_stops_at_the_first_failed_host_and_leaves_the_rest_untouched(project):
    before = logins(project, "mf-c")
    run = project.fab("deploy", "--dry-run", "--parallel", "1", "--max-fail", "0")
    assert run.returncode == 1, run.output
    assert re.search(r"^mf-a\s+probe\s+ok", run.output, re.M), run.output
    assert re.search(r"^mf-b\s+configs\s+failed: .*settings_local.py is not a regular", run.output, re.M), run.output
    assert re.search(r"^mf-c\s+deploy\s+skipped: mf-b failed, so the deploy stopped \(this host was not touched\)$",
                     run.output, re.M), run.output
    assert not re.search(r"^mf-c\s+probe", run.output, re.M), run.output
    assert re.search(r"^mf-c\s+ok=0 changed=0 failed=0\s+\(not deployed: mf-b failed first\)$", run.output, re.M)
    assert logins(project, "mf-c") == before          # not even connected to


def test_max_fail_lets_the_deploy_go_past_failed_hosts_up_to_that_share(project):
    run = project.fab("deploy", "--dry-run", "--parallel", "1", "--max-fail", "34%")   # 1 of 3 hosts is 33%
    assert run.returncode == 1, run.output                                           # a host failed: exit 1
    assert re.search(r"^mf-b\s+configs\s+failed", run.output, re.M), run.output
    assert re.search(r"^mf-c\s+probe\s+ok", run.output, re.M), run.output
    assert "skipped" not in run.output


def test_without_max_fail_every_host_is_deployed(project):
    run = project.fab("deploy", "--dry-run", "--parallel", "1")
    assert run.returncode == 1, run.output
    assert re.search(r"^mf-c\s+probe\s+ok", run.output, re.M), run.output


def test_a_bad_max_fail_is_refused_before_any_connection(project):
    before = logins(project, "mf-a")
    run = project.fab("deploy", "--max-fail", "lots")
    assert run.returncode == 2, run.output
    assert "--max-fail takes a percentage of the hosts from 0 to 100, not 'lots'" in run.output
    assert "Traceback" not in run.output
    assert logins(project, "mf-a") == before
