"""The order in which `make test`'s workers take the test modules (pytest-xdist, one module
per worker at a time): the longest first, so that the last one to finish does not start
late. Seconds measured on 2 cores with the modules one after another (pytest --durations);
a module not listed runs after these, unit tests last."""

from __future__ import annotations

LONGEST_FIRST = (
    "tests/integration/test_rabbitmq_cluster.py",
    "tests/integration/test_safety.py",
    "tests/integration/test_bounds.py",
    "tests/integration/test_privilege.py",
    "tests/integration/test_redis_accounts.py",
    "tests/integration/test_operations.py",
    "tests/integration/test_fleet.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_pools.py",
    "tests/integration/test_deploy.py",
    "tests/integration/test_undeploy.py",
    "tests/integration/test_rabbitmq_loopback.py",
    "tests/integration/test_upgrade.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> tuple[int, int]:
        module = item.nodeid.split("::")[0]
        if module in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(module))
        return (1 if "/integration/" in module else 2, 0)

    items.sort(key=rank)    # stable: each module keeps its own order
