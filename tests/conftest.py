"""How `make test`'s workers share the tests (pytest-xdist): each module is one unit of
work, run by one worker, except that a module whose test hosts come in one set per
Debian release (a module-scoped fixture parametrized with bookworm and trixie) is one
unit per release, so the two sets are deployed side by side. The longest units go first,
so that the last one to finish does not start late: seconds as measured on 2 cores with
three workers (pytest --durations); a unit not listed runs after these, unit tests last."""

from __future__ import annotations

import re

import pytest

SUITES = ("bookworm", "trixie")
LONGEST_FIRST = {
    "tests/integration/test_rabbitmq_cluster.py": 340,
    "tests/integration/test_redis_accounts.py[bookworm]": 330,
    "tests/integration/test_bounds.py": 330,
    "tests/integration/test_operations.py": 330,
    "tests/integration/test_redis_accounts.py[trixie]": 300,
    "tests/integration/test_undeploy.py": 290,
    "tests/integration/test_app_settings.py": 285,
    "tests/integration/test_privilege.py[trixie]": 260,
    "tests/integration/test_shared_redis.py[bookworm]": 245,
    "tests/integration/test_fleet.py": 240,
    "tests/integration/test_privilege.py[bookworm]": 210,
    "tests/integration/test_concurrent.py[bookworm]": 200,
    "tests/integration/test_fleet_controls.py": 210,
    "tests/integration/test_pools.py": 180,
    "tests/integration/test_debian_supervisor.py[bookworm]": 170,
    "tests/integration/test_debian_supervisor.py[trixie]": 120,
    "tests/integration/test_concurrent.py[trixie]": 130,
    "tests/integration/test_safety.py": 145,
    "tests/integration/test_shared_redis.py[trixie]": 145,
    "tests/integration/test_rabbitmq_loopback.py[trixie]": 140,
    "tests/integration/test_rabbitmq_loopback.py[bookworm]": 130,
    "tests/integration/test_queues.py[bookworm]": 110,
    "tests/integration/test_queues.py[trixie]": 110,
    "tests/integration/test_deploy.py[bookworm]": 115,
    "tests/integration/test_deploy.py[trixie]": 115,
    "tests/integration/test_install.py": 130,
    "tests/integration/test_faults.py": 95,
    "tests/integration/test_privilege.py": 75,
    "tests/integration/test_debian_supervisor.py": 60,
    "tests/integration/test_upgrade.py": 40,
    "tests/integration/test_inventory_refusals.py[bookworm]": 25,
    "tests/integration/test_inventory_refusals.py[trixie]": 15,
    "tests/integration/test_shared_redis.py": 20,
    "tests/integration/test_large_recap.py": 30,
}
SUITE_ID = re.compile(r"\[(?:.*-)?(" + "|".join(SUITES) + r")(?:-.*)?\]$")


def work_unit(nodeid: str) -> str:
    """The module, and for an integration test with a release in its id, that release."""
    module = nodeid.split("::")[0]
    suite = SUITE_ID.search(nodeid) if "/integration/" in module else None
    return f"{module}[{suite[1]}]" if suite else module


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> tuple[int, int]:
        unit = work_unit(item.nodeid)
        if unit in LONGEST_FIRST:
            return (0, -LONGEST_FIRST[unit])
        return (1 if "/integration/" in item.nodeid else 2, 0)

    items.sort(key=rank)    # stable: each unit keeps its own order


@pytest.hookimpl(optionalhook=True)   # a run without pytest-xdist (-p no:xdist) still collects
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)
