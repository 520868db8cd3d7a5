"""Worker pools on real servers: two Debian 13 hosts, two pools placed differently.

pl-a runs Redis, beat and the pools celery (queue celery) and exports (queues exports and
bulk); pl-b runs exports only. What a deployer checks by hand: each pool is a supervisor
program of its own that consumes exactly its queues (`celery inspect active_queues`),
tasks sent to a queue run in its pool, `restart-celery --pool` restarts that pool only,
and a pool taken off one host disappears there and keeps running on the other.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Project, install_example_project
from .snapshots import start_deployed

HOSTS = {"pl-a": "trixie", "pl-b": "trixie"}
CONF = "/etc/supervisor/demo_proj-supervisord.conf"
CTL = f"runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c {CONF}"
CELERY = ("cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/celery -A demo_proj.celery "
          "--workdir /opt/arches/demo_proj")
EXPORTS = {"queues": ["exports", "bulk"], "concurrency": 1, "max_tasks_per_child": 100, "prefetch_multiplier": 1,
           "time_limit": 120, "soft_time_limit": 100, "stopwaitsecs": 120,
           "environment": {"EXPORT_DIR": "/srv/exports"}}


class Pools:
    def __init__(self, fleet, project: Project):
        self.fleet, self.project = fleet, project

    def sh(self, host: str, command: str) -> str:
        return self.fleet.exec(host, command).stdout

    def pids(self, host: str) -> dict[str, int]:
        out = self.fleet.exec(host, f"LC_ALL=C {CTL} status", check=False).stdout
        return {p[0]: int(p[3].rstrip(",")) for p in (line.split() for line in out.splitlines())
                if len(p) >= 4 and p[1] == "RUNNING"}

    def programs(self, host: str) -> set[str]:
        out = self.fleet.exec(host, f"LC_ALL=C {CTL} status", check=False).stdout
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def active_queues(self, host: str, node: str) -> list[str]:
        out = self.sh(host, f"{CELERY} inspect active_queues -d {node} --json --timeout 5")
        return sorted(q["name"] for q in json.loads(out.strip().splitlines()[-1])[node])

    def send(self, queue: str, task: str = "where", *args: str) -> object:
        out = self.sh("pl-a", "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python -m "
                              f"demo_proj.sendtask --queue {queue} {task} " + " ".join(args))
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pools(fleet, tmp_path_factory):
    """The fleet from snapshots of deployed hosts (this module tests pools on deployed hosts,
    not the first deploy), made the module's fleet, with its pools, by its deploy."""
    kinds = {"pl-a": "broker", "pl-b": "worker"}
    with ThreadPoolExecutor(len(HOSTS)) as pool:
        started = dict(zip(HOSTS, pool.map(lambda item: start_deployed(fleet, *item, kind=kinds[item[0]]),
                                           HOSTS.items()), strict=True))
    for host in started.values():
        install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("pools"), {
        "pl-a": {"roles": ["broker", "worker", "beat"], "internal_address": started["pl-a"].internal_ip,
                 "pools": ["celery", "exports"]},
        "pl-b": {"roles": ["worker"], "pools": ["exports"]},
    })
    project.data["celery"]["pools"] = {"celery": {"queues": ["celery"], "concurrency": 2}, "exports": EXPORTS}
    project.write()
    deploy = project.fab("deploy")
    assert deploy.returncode == 0, deploy.output
    yield Pools(fleet, project)
    for host in started.values():
        fleet.remove(host)


def test_each_pool_is_a_program_of_its_own_consuming_exactly_its_queues(pools):
    assert pools.programs("pl-a") == {"celery", "exports", "celerybeat"}
    assert pools.programs("pl-b") == {"exports"}
    assert pools.active_queues("pl-a", "celery@pl-a") == ["celery"]
    assert pools.active_queues("pl-a", "exports@pl-a") == ["bulk", "exports"]
    assert pools.active_queues("pl-b", "exports@pl-b") == ["bulk", "exports"]
    conf = pools.sh("pl-b", "cat /etc/supervisor/demo_proj-programs.d/demo_proj-celeryd-exports.conf")
    assert ("worker --loglevel=INFO --queues=exports,bulk --concurrency=1 --max-tasks-per-child=100 "
            "--prefetch-multiplier=1 --time-limit=120 --soft-time-limit=100 --hostname=exports@pl-b\n") in conf
    assert "stopwaitsecs=150\n" in conf           # 120 s of warm shutdown, 30 s of cold (Celery 5.6.3)
    # its own log, the project user's, rotated with the others
    assert pools.sh("pl-b", "stat -c '%U %G %a' /var/log/celery/demo_proj-worker-exports.log").strip() == \
        "arches arches 640"
    assert "/var/log/celery/demo_proj-worker-exports.log" in pools.sh("pl-b", "cat /etc/logrotate.d/"
                                                                             "fabcelery-demo_proj")
    # the pool's extra variable reaches its tasks, and only its (root cannot read /proc/PID/environ here)
    assert pools.send("exports")["export_dir"] == "/srv/exports"
    assert pools.send("celery")["export_dir"] is None


def test_status_has_a_row_per_program_with_its_queues(pools):
    run = pools.project.fab("status", "--json")
    assert run.returncode == 0, run.output
    document = json.loads(run.output[:run.output.rindex("}") + 1])
    hosts = {h["host"]: h for h in document["hosts"]}
    assert [(p["name"], p["queues"]) for p in hosts["pl-a"]["programs"]] == [
        ("celery", ["celery"]), ("exports", ["exports", "bulk"]), ("celerybeat", None)]
    assert [(p["name"], p["state"], p["queues"]) for p in hosts["pl-b"]["programs"]] == [
        ("exports", "RUNNING", ["exports", "bulk"])]
    table = pools.project.fab("status").output
    assert re.search(r"^pl-b\s+exports\s+RUNNING\s+\d+\s+\S+\s+queues: exports, bulk$", table, re.M), table


def test_tasks_sent_to_each_queue_run_in_that_queues_pool(pools):
    assert pools.send("celery") == {"node": "celery@pl-a", "queue": "celery", "host": "pl-a", "export_dir": None}
    ran = [pools.send(queue) for queue in ("exports", "bulk") * 4]
    assert {r["node"] for r in ran} <= {"exports@pl-a", "exports@pl-b"}
    assert {r["queue"] for r in ran} == {"exports", "bulk"}
    assert all(r["node"] == f"exports@{r['host']}" for r in ran)


def test_a_second_deploy_changes_nothing(pools):
    before = {h: pools.pids(h) for h in HOSTS}
    run = pools.project.fab("deploy")
    assert run.returncode == 0, run.output
    assert run.recap() == {"pl-a": {"ok": 7, "changed": 0, "failed": 0},
                           "pl-b": {"ok": 7, "changed": 0, "failed": 0}}
    assert {h: pools.pids(h) for h in HOSTS} == before


def test_restart_celery_pool_restarts_that_pool_only_host_by_host(pools):
    before = {h: pools.pids(h) for h in HOSTS}
    run = pools.project.fab("restart-celery", "--pool", "exports", "--rolling")
    assert run.returncode == 0, run.output
    after = {h: pools.pids(h) for h in HOSTS}
    assert after["pl-a"]["exports"] != before["pl-a"]["exports"]
    assert after["pl-b"]["exports"] != before["pl-b"]["exports"]
    assert (after["pl-a"]["celery"], after["pl-a"]["celerybeat"]) == (before["pl-a"]["celery"],
                                                                      before["pl-a"]["celerybeat"])
    assert "rolling restart, 1 host at a time: pl-a -> pl-b" in run.output
    assert re.search(r"^pl-a\s+restart\s+restarted exports pid \d+ -> \d+; exports@pl-a answers ping", run.output,
                     re.M), run.output
    # and the others on the command line
    ping = pools.project.fab("ping", "--pool", "exports")
    assert ping.returncode == 0 and "exports@pl-b answers: pong" in ping.output
    assert "celery@pl-a" not in ping.output
    logs = pools.project.fab("-H", "pl-b", "logs", "--pool", "exports", "--lines", "3")
    assert "pl-b  ==> /var/log/celery/demo_proj-worker-exports.log <==" in logs.output
    wrong = pools.project.fab("restart-celery", "--pool", "export")
    assert wrong.returncode == 2 and "--pool export: " in wrong.output and "no such pool" in wrong.output


def test_a_pool_added_to_one_host_is_added_there_alone(pools):
    before = {h: pools.pids(h) for h in HOSTS}
    pools.project.data["celery"]["pools"]["reports"] = {"queues": ["reports"], "pool": "threads", "concurrency": 4}
    pools.project.data["hosts"]["pl-b"]["pools"] = ["exports", "reports"]
    pools.project.write()
    run = pools.project.fab("deploy")
    assert run.returncode == 0, run.output
    assert "pl-b  supervisord  reread and update (add reports)" in run.output
    assert run.recap()["pl-a"]["changed"] == 0
    after = {h: pools.pids(h) for h in HOSTS}
    assert after["pl-a"] == before["pl-a"]
    assert after["pl-b"]["exports"] == before["pl-b"]["exports"]
    assert pools.programs("pl-b") == {"exports", "reports"}
    assert pools.active_queues("pl-b", "reports@pl-b") == ["reports"]
    assert pools.send("reports") == {"node": "reports@pl-b", "queue": "reports", "host": "pl-b", "export_dir": None}


def test_a_pool_taken_off_a_host_stops_there_and_keeps_running_on_the_other(pools):
    before = {h: pools.pids(h) for h in HOSTS}
    pools.project.data["hosts"]["pl-a"]["pools"] = ["celery"]
    pools.project.write()
    run = pools.project.fab("deploy")
    assert run.returncode == 0, run.output
    assert "pl-a  configs      remove /etc/supervisor/demo_proj-programs.d/demo_proj-celeryd-exports.conf" in run.output
    assert "pl-a  supervisord  reread and update (stop and remove exports)" in run.output
    assert run.recap()["pl-b"]["changed"] == 0
    assert pools.programs("pl-a") == {"celery", "celerybeat"}
    assert pools.fleet.exec("pl-a", "pgrep -f 'hostname=exports@'", check=False).returncode == 1
    # it got a warm shutdown: running tasks could finish
    assert "Warm shutdown" in pools.sh("pl-a", "tail -n 20 /var/log/celery/demo_proj-worker-exports.log")
    after = {h: pools.pids(h) for h in HOSTS}
    assert after["pl-a"] == {k: v for k, v in before["pl-a"].items() if k != "exports"}
    assert after["pl-b"] == before["pl-b"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "exports@pl-a" in pools.sh("pl-a", f"{CELERY} inspect ping --timeout 1"
                                                                            " 2>&1 || true"):
        time.sleep(0.5)
    assert {pools.send("exports")["node"] for _ in range(3)} == {"exports@pl-b"}
    again = pools.project.fab("deploy")
    assert again.recap() == {"pl-a": {"ok": 7, "changed": 0, "failed": 0},
                             "pl-b": {"ok": 7, "changed": 0, "failed": 0}}


def test_a_host_whose_worker_and_beat_move_elsewhere_stops_its_supervisord_and_the_fleet_goes_on(pools):
    """Last in the module: pl-a is left a broker alone (the deploy would stop its programs again)."""
    pools.project.data["hosts"]["pl-a"] = {"roles": ["broker"],
                                           "internal_address": pools.project.data["hosts"]["pl-a"]["internal_address"]}
    pools.project.data["hosts"]["pl-b"] = {"roles": ["worker", "beat"], "pools": ["celery", "exports", "reports"]}
    pools.project.write()
    running = pools.pids("pl-a")
    assert running, "pl-a runs programs before the deploy"
    run = pools.project.fab("deploy")
    assert run.returncode == 0, run.output
    assert "pl-a  configs      stop and remove demo_proj-supervisord.service" in run.output
    # nothing of the project's runs on pl-a any more, and its unit and program files are gone
    assert pools.fleet.exec("pl-a", "pgrep -f 'supervisord|celery'", check=False).returncode == 1
    gone = ("/etc/systemd/system/demo_proj-supervisord.service", CONF,
            "/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf",
            "/etc/supervisor/demo_proj-programs.d/demo_proj-celerybeat.conf")
    assert pools.sh("pl-a", "ls -d " + " ".join(gone) + " 2>/dev/null || true") == ""
    # what the project's own processes there may still use stays: the virtualenv, the logs, the block
    settings = "/opt/arches/demo_proj/demo_proj/settings_local.py"
    kept = pools.sh("pl-a", "ls -d /opt/arches/venv/bin/celery /var/log/celery/demo_proj-worker.log && "
                            f"grep -c '^# BEGIN fabcelery managed block' {settings}")
    assert kept.splitlines() == ["/opt/arches/venv/bin/celery", "/var/log/celery/demo_proj-worker.log", "1"], kept
    # the programs were given a warm shutdown, and Redis on pl-a still serves the fleet
    assert "Warm shutdown" in pools.sh("pl-a", "tail -n 20 /var/log/celery/demo_proj-worker.log")
    assert pools.programs("pl-b") == {"celery", "exports", "reports", "celerybeat"}
    assert pools.send("celery")["node"] == "celery@pl-b"
    status = pools.project.fab("status")
    assert status.returncode == 0, status.output
    again = pools.project.fab("deploy")
    assert again.returncode == 0, again.output
    assert {host: counts["changed"] for host, counts in again.recap().items()} == {"pl-a": 0, "pl-b": 0}
