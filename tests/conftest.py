"""How `make test`'s workers share the tests (pytest-xdist, --dist loadgroup): each module
is one group, run by one worker, except that a module whose test hosts come in one set per
Debian release (a module-scoped fixture parametrized with bookworm and trixie) is one group
per release, so the two sets are deployed side by side. The longest groups go first, so
that the last one to finish does not start late: seconds as measured on 2 cores with three
workers (pytest --durations); a group not listed runs after these, unit tests last."""

from __future__ import annotations

import pytest

SUITES = ("bookworm", "trixie")
LONGEST_FIRST = {
    "test_rabbitmq_cluster.py": 340,
    "test_redis_accounts.py[bookworm]": 330,
    "test_bounds.py": 330,
    "test_operations.py": 330,
    "test_redis_accounts.py[trixie]": 300,
    "test_undeploy.py": 290,
    "test_privilege.py[trixie]": 260,
    "test_fleet.py": 240,
    "test_privilege.py[bookworm]": 210,
    "test_pools.py": 180,
    "test_safety.py": 145,
    "test_rabbitmq_loopback.py[trixie]": 140,
    "test_rabbitmq_loopback.py[bookworm]": 130,
    "test_deploy.py[bookworm]": 115,
    "test_deploy.py[trixie]": 115,
    "test_faults.py": 95,
    "test_privilege.py": 75,
    "test_upgrade.py": 40,
}


def group_of(item) -> str:
    module = item.nodeid.split("::")[0].rpartition("/")[2]
    callspec = getattr(item, "callspec", None)
    suites = [value for value in (callspec.params.values() if callspec else ()) if value in SUITES]
    return f"{module}[{suites[0]}]" if "/integration/" in item.nodeid and suites else module


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of(item)))

    def rank(item) -> tuple[int, int]:
        group = group_of(item)
        if group in LONGEST_FIRST:
            return (0, -LONGEST_FIRST[group])
        return (1 if "/integration/" in item.nodeid else 2, 0)

    items.sort(key=rank)    # stable: each group keeps its own order
