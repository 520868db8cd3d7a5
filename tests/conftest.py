"""How `make test`'s workers share the tests (pytest-xdist): each module is one unit of
work, run by one worker, except that a module whose test hosts come in one set per
Debian release (a module-scoped fixture parametrized with bookworm and trixie) is one
unit per release, so the two sets are deployed side by side. The longest units go first,
so that the last one to finish does not start late: seconds per unit as measured in a
real run, kept in tests/durations.json, which `make durations` rewrites (this file's
--write-durations: the time each unit's tests took, setup and teardown included); a
unit not listed runs after these, unit tests last."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

SUITES = ("bookworm", "trixie")
DURATIONS = Path(__file__).with_name("durations.json")
LONGEST_FIRST: dict[str, float] = json.loads(DURATIONS.read_text())
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


# --- `make durations`: the seconds of each integration work unit, from this run -------------


def pytest_addoption(parser):
    parser.addoption("--write-durations", metavar="FILE", default=None,
                     help="write each integration work unit's seconds in this run (its tests' setup, call and "
                          "teardown) into FILE (JSON), keeping the units this run did not measure")


class UnitDurations:
    """Adds up the phases' durations per work unit, from the reports that reach the main
    process (with xdist, the workers' reports come there too)."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report):
        if "/integration/" in report.nodeid:
            self.seconds[work_unit(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session):
        if not self.seconds:
            return
        known = json.loads(self.path.read_text()) if self.path.exists() else {}
        known.update({unit: round(seconds) for unit, seconds in self.seconds.items()})
        ordered = dict(sorted(known.items(), key=lambda item: (-item[1], item[0])))
        self.path.write_text(json.dumps(ordered, indent=2) + "\n")


def pytest_configure(config):
    path = config.getoption("--write-durations")
    if path and not hasattr(config, "workerinput"):     # the main process only, not an xdist worker
        config.pluginmanager.register(UnitDurations(Path(path)), "unit-durations")
