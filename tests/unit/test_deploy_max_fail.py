"""`fab deploy --max-fail PERCENT` (tasks/fleet.py FailBound), with deploy_host replaced: once more
hosts that were reached have failed than that share of the fleet, no further host is started;
without it every host is deployed. Hosts run one at a time here (--parallel 1), in order."""

from __future__ import annotations

import io
import re

import pytest

from tasks import fleet
from tasks.report import HostResult, Reporter

from .conftest import make_inventory

HOSTS = {f"w{i}": {"roles": ["worker", "beat"] if i == 5 else ["worker"]} for i in range(1, 6)} | {
    "mq": {"roles": ["broker"], "internal_address": "10.0.0.5"}}


def run(monkeypatch, fails: dict[str, bool], max_fail: int | None, names=None):
    """fails: host -> reached (True: it failed after it was reached; False: it could not be reached)."""
    started: list[str] = []
    remotes: dict[str, object] = {}

    class FakeRemote:
        def __init__(self, host, *args, **kwargs):
            self.secrets = ()
            self.reached = fails.get(host.name, True)
            remotes[host.name] = self

    def fake_deploy_host(target, remote, reporter, job, dry_run=False, place=None):
        host = target.host
        started.append(host.name)
        place.values(None) if host.name == "mq" else None
        if host.name in fails:
            return HostResult(host=host.name, failed=1, error="boom")
        return HostResult(host=host.name, ok=1)

    monkeypatch.setattr(fleet, "deploy_host", fake_deploy_host)
    monkeypatch.setattr(fleet, "Remote", FakeRemote)
    monkeypatch.setenv("FABCELERY_BROKER_PASSWORD", "from-env")
    inventory = make_inventory(hosts=HOSTS, broker__password_env="FABCELERY_BROKER_PASSWORD")
    hosts = [inventory.hosts[n] for n in (names or [f"w{i}" for i in range(1, 6)])]
    out = io.StringIO()
    results = fleet.deploy_fleet(inventory, hosts, None, Reporter(stream=out), dry_run=False,
                                 accept_new_host_keys=False, parallel=1, max_fail=max_fail)
    return started, {r.host: (r.failed, r.error) for r in results}, out.getvalue()


def test_without_max_fail_every_host_is_deployed(monkeypatch):
    started, results, _ = run(monkeypatch, {"w1": True, "w2": True}, None)
    assert started == ["w1", "w2", "w3", "w4", "w5"]


def test_max_fail_0_stops_at_the_first_failed_host_and_names_the_rest_untouched(monkeypatch):
    started, results, out = run(monkeypatch, {"w2": True}, 0)
    assert started == ["w1", "w2"]
    assert results == {"w1": (0, ""), "w2": (1, "boom"), "w3": (0, "not deployed: w2 failed first"),
                       "w4": (0, "not deployed: w2 failed first"), "w5": (0, "not deployed: w2 failed first")}
    assert re.search(r"^w3\s+deploy\s+skipped: w2 failed, so the deploy stopped \(this host was not touched\)$", out,
                     re.M), out


@pytest.mark.parametrize(("max_fail", "started"), [
    (20, ["w1", "w2", "w3"]),               # 1 of 5 is 20%: not more; 2 of 5 is
    (39, ["w1", "w2", "w3"]),
    (40, ["w1", "w2", "w3", "w4", "w5"]),   # 2 of 5 is 40%: not more
])
def test_max_fail_is_a_share_of_the_fleet(monkeypatch, max_fail, started):
    got, results, out = run(monkeypatch, {"w2": True, "w3": True}, max_fail)
    assert got == started
    if len(started) < 5:
        why = rf"w3 failed \(2 of 5 hosts failed, more than --max-fail {max_fail}%\), so the deploy stopped"
        assert re.search(rf"^w4\s+deploy\s+skipped: {why}", out, re.M), out


def test_a_host_that_cannot_be_reached_is_passed_over(monkeypatch):
    started, results, _ = run(monkeypatch, {"w1": False, "w3": True}, 0)
    assert started == ["w1", "w2", "w3"]
    assert results["w4"] == (0, "not deployed: w3 failed first")


def test_a_broker_host_left_untouched_leaves_its_users_untouched_and_nothing_waits(monkeypatch):
    started, results, _ = run(monkeypatch, {"w1": True}, 0, names=["w1", "mq", "w2"])
    # the broker host goes first in the queue: it is deployed; then w1 fails and w2 is not started
    assert started == ["mq", "w1"]
    assert results["w2"] == (0, "not deployed: w1 failed first")
