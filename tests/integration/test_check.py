"""Is work flowing? `fab check` on real servers: a canary through every queue of every pool.

Redis (Debian 12): ck-a runs Redis and the pool celery (queue celery), ck-b the pool exports
(queues exports and bulk) and beat. RabbitMQ (Debian 13): one host with both pools. Each
canary must be taken by a worker of its own pool; with the pool exports stopped, check exits 1
naming exports and bulk; and nothing is left behind in the broker, asked independently
(Redis as the project's account: the number of keys, the queues' lists, kombu's unacked hash;
RabbitMQ: rabbitmqctl's count of the queues' messages).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Project, install_example_project, wait_for
from .snapshots import start_deployed

PASSWORD_FILE = "/var/lib/fabcelery/demo_proj/broker-password"
CTL = "runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c /etc/supervisor/demo_proj-supervisord.conf"
POOLS = {"celery": {"queues": ["celery"], "concurrency": 2},
         "exports": {"queues": ["exports", "bulk"], "concurrency": 1, "prefetch_multiplier": 1}}
ROW = re.compile(r"^(?P<queue>\S+)\s+(?P<pool>\S+)\s+(?P<node>\S+)\s+(?P<ms>\d+ ms|-)\s+(?P<result>.+)$", re.M)


def rows(output: str) -> dict[str, dict[str, str]]:
    """fab check's table: QUEUE -> its cells."""
    return {m["queue"]: m.groupdict() for m in ROW.finditer(output) if m["queue"] != "QUEUE"}


class Redis:
    def __init__(self, fleet, project: Project):
        self.fleet, self.project = fleet, project

    def ask(self, *commands: str) -> list[str]:
        """Redis's answers, as the project's own account (independent of fab)."""
        script = "\n".join(commands)
        out = self.fleet.exec("ck-a", f'REDISCLI_AUTH="$(cat {PASSWORD_FILE})" redis-cli --user demo_proj',
                              input=script + "\n").stdout
        return out.split()

    def state(self) -> list[str]:
        """The number of keys, each queue's length and kombu's unacked hash."""
        return self.ask("DBSIZE", "LLEN demo_proj:celery", "LLEN demo_proj:exports", "LLEN demo_proj:bulk",
                        "HLEN demo_proj:unacked")


@pytest.fixture(scope="module")
def redis(fleet, tmp_path_factory):
    """From snapshots of deployed hosts (the module tests day two), made the module's fleet, with
    its pools and beat on ck-b, by its deploy."""
    hosts = {"ck-a": "bookworm", "ck-b": "bookworm"}
    kinds = {"ck-a": "broker", "ck-b": "worker"}
    with ThreadPoolExecutor(2) as pool:
        started = dict(zip(hosts, pool.map(lambda item: start_deployed(fleet, *item, kind=kinds[item[0]]),
                                           hosts.items()), strict=True))
    for host in started.values():
        install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("check"), {
        "ck-a": {"roles": ["broker", "worker"], "internal_address": started["ck-a"].internal_ip, "pools": ["celery"]},
        "ck-b": {"roles": ["worker", "beat"], "pools": ["exports"]},
    })
    project.data["celery"]["pools"] = POOLS
    project.write()
    deploy = project.fab("deploy")
    assert deploy.returncode == 0, deploy.output
    # beat's heartbeat stores a result every few seconds: stopped, the broker's keys hold still
    fleet.exec("ck-b", f"{CTL} stop celerybeat")
    yield Redis(fleet, project)
    for host in started.values():
        fleet.remove(host)


def test_every_queue_is_taken_by_its_own_pool_with_the_round_trip_and_nothing_is_left_in_redis(redis):
    before = redis.state()
    run = redis.project.fab("check")
    assert run.returncode == 0, run.output
    table = rows(run.output)
    assert list(table) == ["celery", "exports", "bulk"], run.output
    assert [(r["pool"], r["node"], r["result"]) for r in table.values()] == [
        ("celery", "celery@ck-a", "OK"), ("exports", "exports@ck-b", "OK"), ("exports", "exports@ck-b", "OK")]
    assert all(r["ms"].endswith(" ms") for r in table.values()), run.output
    assert re.search(r"^ck-a\s+ok=3 changed=0 failed=0$", run.output, re.M), run.output
    # no result key, no canary in a queue or unacknowledged
    assert redis.state() == before
    assert before[1:] == ["0", "0", "0", "0"]
    # the worker discarded it unrun: its log says so under the canary's name
    log = redis.fleet.exec("ck-b", "grep -c 'Discarding revoked task: fabcelery.check' "
                                   "/var/log/celery/demo_proj-worker-exports.log", check=False).stdout
    assert log.strip() not in ("", "0"), log


def test_a_stopped_pool_exits_1_naming_its_queues_and_its_canaries_are_taken_out(redis):
    before = redis.state()
    stop = redis.project.fab("stop-celery", "--pool", "exports")
    assert stop.returncode == 0, stop.output
    try:
        run = redis.project.fab("check", "--timeout", "4")
        assert run.returncode == 1, run.output
        table = rows(run.output)
        assert table["celery"]["result"] == "OK", run.output
        for queue in ("exports", "bulk"):
            assert table[queue]["node"] == "-"
            assert table[queue]["result"].startswith("NOT TAKEN: nobody took it within 4 s: no worker of exports "
                                                     "answers (it should run as exports@ck-b)"), run.output
            assert table[queue]["result"].endswith("the canary was taken out of the queue"), run.output
        assert "fab check: 2 of 3 queues failed: exports (not taken), bulk (not taken)" in run.output
        assert redis.state() == before      # no canary waits in exports or bulk
    finally:
        start = redis.project.fab("start-celery", "--pool", "exports")
        assert start.returncode == 0, start.output


def test_only_other_messages_stay_in_the_queue_of_a_stopped_pool(redis):
    """The canary is removed by its own id: tasks that wait for the stopped pool stay."""
    stop = redis.project.fab("stop-celery", "--pool", "exports")
    assert stop.returncode == 0, stop.output
    try:
        redis.fleet.exec("ck-a", "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python -c "
                                 "'from demo_proj.celery import app\nfor _ in range(3): "
                                 "app.send_task(\"demo_proj.tasks.add\", args=[1, 2], queue=\"exports\")'")
        assert redis.ask("LLEN demo_proj:exports") == ["3"]
        run = redis.project.fab("check", "--timeout", "3", "--pool", "exports")
        assert run.returncode == 1, run.output
        assert redis.ask("LLEN demo_proj:exports") == ["3"]
    finally:
        start = redis.project.fab("start-celery", "--pool", "exports")
        assert start.returncode == 0, start.output
    assert wait_for(lambda: redis.ask("LLEN demo_proj:exports") == ["0"], timeout=60)


STRAY = ("cd /opt/arches/demo_proj && runuser -u arches -- env HOME=/tmp /opt/arches/venv/bin/celery "
         "-A demo_proj.celery")


def test_a_worker_of_another_pool_that_takes_a_queue_is_named_and_exits_1(redis):
    """A worker started by hand as celery@stray (the pool celery's name) consuming bulk."""
    stop = redis.project.fab("stop-celery", "--pool", "exports")
    assert stop.returncode == 0, stop.output
    try:
        redis.fleet.exec("ck-a", f"{STRAY} worker -Q bulk -n celery@stray --pool solo --detach "
                                 "--logfile /tmp/stray.log --pidfile /tmp/stray.pid")
        assert wait_for(lambda: redis.fleet.exec("ck-a", f"{STRAY} inspect ping -d celery@stray --timeout 2",
                                                 check=False).returncode == 0, timeout=60)
        run = redis.project.fab("check", "--timeout", "5", "--pool", "exports")
        assert run.returncode == 1, run.output
        table = rows(run.output)
        assert (table["bulk"]["node"], table["bulk"]["result"]) == (
            "celery@stray", "WRONG POOL: taken by celery@stray of the pool celery, which should not consume bulk "
                            "(only exports should)"), run.output
        assert table["exports"]["result"].startswith("NOT TAKEN"), run.output
        assert "fab check: 2 of 2 queues failed: exports (not taken), bulk (taken by celery@stray)" in run.output
    finally:
        redis.fleet.exec("ck-a", "kill $(cat /tmp/stray.pid)", check=False)
        start = redis.project.fab("start-celery", "--pool", "exports")
        assert start.returncode == 0, start.output


@pytest.fixture(scope="module")
def rabbitmq(fleet, tmp_path_factory):
    host = fleet.start("ck-r", "trixie")
    install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("check-rabbitmq"), {
        "ck-r": {"roles": ["broker", "worker", "beat"]},
    })
    project.data["broker"]["kind"] = "rabbitmq"
    project.data["celery"]["pools"] = POOLS
    project.write()
    deploy = project.fab("deploy")
    assert deploy.returncode == 0, deploy.output
    yield project
    fleet.remove(host)


def messages(fleet, queue: str) -> int:
    """RabbitMQ's own count of the queue's messages (ready and unacknowledged)."""
    out = fleet.exec("ck-r", "rabbitmqctl -q list_queues -p demo_proj name messages").stdout
    counts = {p[0]: int(p[1]) for p in (line.split() for line in out.splitlines()) if len(p) == 2 and p[1].isdigit()}
    return counts.get(queue, 0)


def test_rabbitmq_every_queue_is_taken_and_a_stopped_pool_exits_1_leaving_its_queues_empty(rabbitmq, fleet):
    run = rabbitmq.fab("check")
    assert run.returncode == 0, run.output
    assert [(q, r["node"], r["result"]) for q, r in rows(run.output).items()] == [
        ("celery", "celery@ck-r", "OK"), ("exports", "exports@ck-r", "OK"), ("bulk", "exports@ck-r", "OK")]
    assert [messages(fleet, q) for q in ("exports", "bulk")] == [0, 0]
    stop = rabbitmq.fab("stop-celery", "--pool", "exports")
    assert stop.returncode == 0, stop.output
    run = rabbitmq.fab("check", "--timeout", "4")
    assert run.returncode == 1, run.output
    table = rows(run.output)
    assert [table[q]["result"].split(":")[0] for q in ("celery", "exports", "bulk")] == ["OK", "NOT TAKEN",
                                                                                        "NOT TAKEN"]
    assert "RabbitMQ drops the canary (its time to live, 4 s, is over)" in table["exports"]["result"]
    # the canaries' time to live is over: RabbitMQ has dropped them
    assert wait_for(lambda: [messages(fleet, q) for q in ("exports", "bulk")] == [0, 0], timeout=5), \
        fleet.exec("ck-r", "rabbitmqctl -q list_queues -p demo_proj name messages").stdout
