"""`make durations`: each integration work unit's seconds, added up from its tests' reports
(setup, call and teardown), written over the units measured, the others kept."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.conftest import UnitDurations


def report(nodeid: str, duration: float):
    return SimpleNamespace(nodeid=nodeid, duration=duration)


def test_each_units_phases_are_added_up_and_the_file_keeps_what_was_not_measured(tmp_path):
    path = tmp_path / "durations.json"
    path.write_text(json.dumps({"tests/integration/test_a.py": 50, "tests/integration/test_old.py": 7}))
    plugin = UnitDurations(path)
    for nodeid, seconds in [
        ("tests/integration/test_a.py::test_one", 100.4),          # setup: the module's deploy
        ("tests/integration/test_a.py::test_one", 2.0),
        ("tests/integration/test_a.py::test_two", 3.0),
        ("tests/integration/test_b.py::test_x[bookworm]", 40.0),
        ("tests/integration/test_b.py::test_x[trixie]", 30.0),
        ("tests/unit/test_c.py::test_y", 1.0),                      # unit tests are not scheduled by time
    ]:
        plugin.pytest_runtest_logreport(report(nodeid, seconds))
    plugin.pytest_sessionfinish(None)
    assert list(json.loads(path.read_text()).items()) == [
        ("tests/integration/test_a.py", 105),
        ("tests/integration/test_b.py[bookworm]", 40),
        ("tests/integration/test_b.py[trixie]", 30),
        ("tests/integration/test_old.py", 7),
    ]
