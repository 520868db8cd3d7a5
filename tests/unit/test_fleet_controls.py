"""Fleet controls of a rolling restart: `--rolling` as a share of the hosts, `--max-fail PERCENT`."""

from __future__ import annotations

import pytest

from tasks.rolling import max_fail_share, rolling_size, too_many_failed

from .test_operations import rolling_run


@pytest.mark.parametrize(("value", "hosts", "size"), [
    ("10%", 100, 10), ("10%", 15, 1), ("10%", 5, 1), ("50%", 4, 2), ("34%", 3, 1), ("100%", 7, 7),
    ("25 %", 8, 2), ("3", 100, 3), (True, 100, 1), (None, 100, None),
])
def test_rolling_takes_a_count_or_a_share_rounded_down_and_at_least_one(value, hosts, size):
    assert rolling_size(value, hosts) == size


@pytest.mark.parametrize("bad", ["0%", "101%", "%", "x%", "-5%", "1.5%", "0", "abc"])
def test_a_bad_rolling_value_is_refused(bad):
    with pytest.raises(ValueError, match="--rolling takes"):
        rolling_size(bad, 10)


@pytest.mark.parametrize(("value", "share"), [(None, 0), ("", 0), ("0", 0), ("10", 10), ("10%", 10), ("100", 100)])
def test_max_fail_is_a_percentage(value, share):
    assert max_fail_share(value) == share


@pytest.mark.parametrize("bad", ["101", "-1", "ten", "5.5"])
def test_a_bad_max_fail_is_refused(bad):
    with pytest.raises(ValueError, match="--max-fail takes a percentage"):
        max_fail_share(bad)


@pytest.mark.parametrize(("failed", "hosts", "max_fail", "stop"), [
    (1, 10, 0, True), (0, 10, 0, False), (1, 10, 10, False), (2, 10, 10, True), (1, 3, 34, False),
    (2, 3, 34, True), (3, 3, 100, False),
])
def test_too_many_failed_is_more_than_the_share(failed, hosts, max_fail, stop):
    assert too_many_failed(failed, hosts, max_fail) is stop


def test_max_fail_lets_the_rolling_restart_go_past_failures_up_to_the_share(monkeypatch):
    outcomes = {"a": "ok", "b": "fails", "c": "ok", "d": "fails", "e": "ok", "f": "ok"}
    # 1 of 6 is 16%, 2 of 6 is 33%: at 20% the second failure stops it
    calls, results, out = rolling_run(monkeypatch, outcomes, max_fail=20)
    assert calls == ["a", "b", "c", "d"]
    assert results["e"].error == results["f"].error == "not restarted: d failed first"
    assert "e     restart      skipped: d failed (2 of 6 hosts failed, more than --max-fail 20%), so the rolling " \
           "restart stopped (this host was not touched)" in out
    calls, results, _ = rolling_run(monkeypatch, outcomes, max_fail=40)
    assert calls == list(outcomes) and results["f"].changed == 1


def test_without_max_fail_the_first_failure_stops_it_as_before(monkeypatch):
    calls, results, out = rolling_run(monkeypatch, {"a": "ok", "b": "fails", "c": "ok"})
    assert calls == ["a", "b"]
    assert "c     restart      skipped: b failed, so the rolling restart stopped" in out


def test_unreachable_hosts_do_not_count_as_failed_restarts(monkeypatch):
    calls, _, _ = rolling_run(monkeypatch, {"a": "ok", "b": "unreachable", "c": "unreachable", "d": "ok"})
    assert calls == ["a", "b", "c", "d"]


# --- the recap of a large fleet ---------------------------------------------------------------


def recap_of(results) -> list[str]:
    import io

    from tasks.report import Reporter

    out = io.StringIO()
    Reporter(stream=out).recap(results)
    return out.getvalue().splitlines()


def test_up_to_twenty_hosts_the_recap_has_a_line_for_each():
    from tasks.report import HostResult

    lines = recap_of([HostResult(host=f"h{i}", ok=3) for i in range(20)])
    assert lines[:2] == ["", "RECAP"] and len(lines) == 22
    assert lines[2] == "h0    ok=3 changed=0 failed=0"


def test_a_large_fleet_names_the_hosts_that_failed_or_changed_and_counts_the_rest():
    from tasks.report import HostResult

    results = [HostResult(host=f"host{i}", ok=2) for i in range(60)]
    results[7] = HostResult(host="host7", ok=1, failed=1, error="probe: no answer\nmore")
    results[30] = HostResult(host="host30", ok=2, changed=1)
    results[41] = HostResult(host="host41", notes=["interrupted (Ctrl-C) before it started: nothing was done"])
    lines = recap_of(results)
    assert lines == ["", "RECAP",
                     "host7   ok=1 changed=0 failed=1  (probe: no answer)",
                     "host30  ok=2 changed=1 failed=0",
                     "host41  ok=0 changed=0 failed=0  (interrupted (Ctrl-C) before it started: nothing was done)",
                     "and 57 more hosts with nothing changed and nothing failed (ok=114 in all)"]


def test_a_large_fleet_where_every_host_changed_is_named_in_full():
    from tasks.report import HostResult

    lines = recap_of([HostResult(host=f"h{i}", ok=8, changed=5) for i in range(30)])
    assert len(lines) == 32 and not any(line.startswith("and ") for line in lines)


def test_a_large_fleet_where_nothing_happened_is_one_line():
    from tasks.report import HostResult

    lines = recap_of([HostResult(host=f"h{i}", ok=1) for i in range(25)])
    assert lines == ["", "RECAP", "25 hosts with nothing changed and nothing failed (ok=25 in all)"]
