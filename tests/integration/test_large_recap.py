"""The recap of a fleet of dozens of hosts stays readable: the hosts that failed or would change
something by name, the others counted in one line.

The fleet: 22 bare hosts (Debian 12 and 13), nothing deployed; `fab undeploy --dry-run` finds
nothing to remove on them, but for one with a leftover supervisord config and one that is
shut down.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Project

HOSTS = {f"lr{i:02d}": ("bookworm" if i % 2 else "trixie") for i in range(1, 23)}
LEFTOVER = "/etc/supervisor/demo_proj-supervisord.conf"


@pytest.fixture(scope="module")
def large(fleet, tmp_path_factory):
    with ThreadPoolExecutor(6) as pool:
        started = list(pool.map(lambda item: fleet.start(*item), HOSTS.items()))
    project = Project(fleet, tmp_path_factory.mktemp("large"), {name: {"roles": ["worker"]} for name in HOSTS})
    project.data["hosts"]["lr01"] = {"roles": ["broker", "worker", "beat"], "internal_address": started[0].internal_ip}
    project.write()
    fleet.exec("lr05", f"mkdir -p /etc/supervisor && echo '[supervisord]' > {LEFTOVER}")
    fleet.stop("lr09")
    yield project
    for host in started:
        fleet.remove(host)


def test_the_recap_names_the_changed_and_failed_hosts_and_counts_the_others(large):
    run = large.fab("undeploy", "--dry-run", "--parallel", str(len(HOSTS)))
    assert run.returncode == 1, run.output                 # lr09 cannot be reached
    recap = run.output[run.output.index("\nRECAP\n"):].strip().splitlines()
    assert len(recap) == 4, recap
    assert re.fullmatch(r"lr05  ok=\d+ changed=[1-9]\d* failed=0", recap[1]), recap
    assert re.fullmatch(r"lr09  ok=0 changed=0 failed=1  \(.*127\.0\.0\.1.*\)", recap[2]), recap
    assert re.fullmatch(r"and 20 more hosts with nothing changed and nothing failed \(ok=\d+ in all\)", recap[3]), recap
    # every host's own lines are still there, above the recap
    for name in HOSTS:
        assert re.search(rf"^{name}\s+(probe\s+ok|connect\s+failed)", run.output, re.M), name
    assert f"lr05  configs      would remove {LEFTOVER}" in run.output
