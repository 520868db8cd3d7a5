"""deploy_fleet's ordering, with deploy_host replaced: every host probes at once, a worker host
applies only once its broker host is done, and skips when that host failed."""

from __future__ import annotations

import threading
import time

import pytest

from tasks import fleet
from tasks.apply import SkipHost
from tasks.probe import Facts
from tasks.report import HostResult, Reporter

from .conftest import make_inventory

HOSTS = {"mq": {"roles": ["broker"], "internal_address": "10.0.0.5"},
         "app1": {"roles": ["worker", "beat"]}, "app2": {"roles": ["worker"]}}


class NoRemote:
    def __init__(self, *args, **kwargs):
        self.secrets = ()
        self.reached = True


def run(monkeypatch, broker_fails: bool, parallel: int = 10, env_password: str | None = None,
        only: tuple[str, ...] = (), outside: dict | Exception | None = None):
    events: list[str] = []
    lock = threading.Lock()

    def log(text):
        with lock:
            events.append(text)

    def fake_deploy_host(target, remote, reporter, job, dry_run=False, place=None):
        host = target.host
        log(f"{host.name} probed")
        try:
            facts = Facts(contents={"/var/lib/fabcelery/my_proj/broker-password": "kept\n"})
            password = place.values(facts)["password"]
            place.before_apply()
        except SkipHost as exc:
            log(f"{host.name} skipped ({exc})")
            return HostResult(host=host.name, failed=1, error=str(exc))
        if host.name == "mq":
            time.sleep(0.2)           # the broker host's changes take a while
            if broker_fails:
                log("mq failed")
                return HostResult(host="mq", failed=1, error="broker: boom")
        log(f"{host.name} applied with {password}")
        return HostResult(host=host.name, ok=1)

    monkeypatch.setattr(fleet, "deploy_host", fake_deploy_host)
    monkeypatch.setattr(fleet, "Remote", NoRemote)
    if env_password:
        monkeypatch.setenv("FABCELERY_BROKER_PASSWORD", env_password)
    else:
        monkeypatch.delenv("FABCELERY_BROKER_PASSWORD", raising=False)
    inventory = make_inventory(hosts=HOSTS, broker__password_env="FABCELERY_BROKER_PASSWORD")
    hosts = [h for h in inventory.hosts.values() if not only or h.name in only]

    def fake_read_kept(inventory, host, config, accept_new_host_keys):
        log(f"read {host.name}")
        if isinstance(outside, Exception):
            raise outside
        return outside or {}

    monkeypatch.setattr(fleet, "read_kept", fake_read_kept)
    results = fleet.deploy_fleet(inventory, hosts, None, Reporter(stream=open("/dev/null", "w")), dry_run=False,
                                 accept_new_host_keys=False, parallel=parallel)
    return events, results


def test_workers_probe_at_once_and_apply_after_the_broker_host(monkeypatch):
    events, results = run(monkeypatch, broker_fails=False)
    assert events.index("mq applied with kept") < events.index("app1 applied with kept")
    assert events.index("mq applied with kept") < events.index("app2 applied with kept")
    assert max(events.index(f"{h} probed") for h in ("mq", "app1", "app2")) < events.index("mq applied with kept")
    assert [r.failed for r in results] == [0, 0, 0]


def test_workers_are_skipped_when_the_broker_host_fails(monkeypatch):
    events, results = run(monkeypatch, broker_fails=True)
    assert "mq failed" in events
    assert not any("app" in e and "applied" in e for e in events)
    assert {r.host: r.error for r in results} == {"mq": "broker: boom", "app1": "the broker host mq failed",
                                                  "app2": "the broker host mq failed"}


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_small_parallel_cannot_deadlock(monkeypatch, parallel):
    events, results = run(monkeypatch, broker_fails=False, parallel=parallel, env_password="from-env")
    assert [r.failed for r in results] == [0, 0, 0]
    assert "app2 applied with from-env" in events


def test_a_broker_host_outside_the_run_is_read_once_and_not_waited_for(monkeypatch):
    events, results = run(monkeypatch, broker_fails=False, only=("app1", "app2"), outside={"password": "on-mq"})
    assert events.count("read mq") == 1 and events[0] == "read mq"
    assert {"app1 applied with on-mq", "app2 applied with on-mq"} <= set(events)
    assert [r.failed for r in results] == [0, 0]


def test_an_unreachable_broker_host_outside_the_run_fails_its_users_untouched(monkeypatch):
    from tasks.host_errors import HostError

    events, results = run(monkeypatch, broker_fails=False, only=("app1",), outside=HostError("Connection refused"))
    assert events == ["read mq"]
    assert [(r.host, r.failed, r.error) for r in results] == [("app1", 1, "broker host mq unreachable")]


def test_a_new_password_is_told_once_on_the_broker_hosts_line(monkeypatch):
    lines = []
    monkeypatch.setattr(Reporter, "line", lambda self, host, text: lines.append((host, text)))
    run(monkeypatch, broker_fails=False, only=("app1",), outside={"password": ""})
    assert [(h, t.split()[0], "a new one will be kept there" in t) for h, t in lines] == [("mq", "broker", True)]


def test_a_host_that_wakes_as_soon_as_the_values_are_decided_finds_its_broker_host_accepted(monkeypatch):
    """The broker host's own thread may not have run on after the decision (CI saw the race):
    what the other hosts read is settled before they wake."""
    monkeypatch.delenv("FABCELERY_BROKER_PASSWORD", raising=False)
    inventory = make_inventory(hosts=HOSTS, broker__password_env="FABCELERY_BROKER_PASSWORD")
    group = fleet.BrokerGroup(inventory, Reporter(stream=open("/dev/null", "w")), list(inventory.hosts),
                              outside={}, unreachable={})
    group.report("mq", Facts(contents={"/var/lib/fabcelery/my_proj/broker-password": "kept\n"}))
    assert group.user_values("mq") == {"password": "kept"}


def test_a_broker_host_outside_the_run_is_not_connected_to_when_the_environment_gives_the_password(monkeypatch):
    events, results = run(monkeypatch, broker_fails=False, only=("app1",), env_password="from-env",
                          outside={"password": "on-mq"})
    assert events == ["app1 probed", "app1 applied with from-env"]
    assert [r.failed for r in results] == [0]
