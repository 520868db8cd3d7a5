"""One RabbitMQ host grown into a three-node cluster, as a user does once the broker matters:
the inventory gains two broker hosts. The first host keeps its data when the others join it,
and its queues are classic queues, which Celery (declaring a cluster's queues as quorum
queues) would be refused: the deploy refuses before anything changes, and says how to drain
and delete them. Done as it says, the next deploy forms the cluster and the queue is a quorum
queue. Debian 13 (RabbitMQ 4.0).

The hosts start from the RabbitMQ snapshot (tests/integration/snapshots.py): gr-m1 is the
user's single host (broker, worker and beat, deployed again with this module's inventory);
gr-m2 and gr-m3 are new broker hosts, their snapshot's supervisord stopped first
(start_rabbitmq_node), as a new host has none running.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Project, wait_for
from .snapshots import start_rabbitmq_node

MQ = ("gr-m1", "gr-m2", "gr-m3")
SEED = MQ[0]
SETTINGS = "/opt/arches/demo_proj/demo_proj/settings_local.py"
APP = "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python"
WAITING = 3
COOKIE = "/var/lib/fabcelery/demo_proj/erlang-cookie"     # fabcelery's copy of a cluster's cookie


def single(hosts) -> dict:
    return {SEED: {"roles": ["broker", "worker", "beat"], "internal_address": hosts[SEED].internal_ip}}


def grown(hosts) -> dict:
    return single(hosts) | {name: {"roles": ["broker"], "internal_address": hosts[name].internal_ip}
                            for name in MQ[1:]}


class Nodes:
    def __init__(self, fleet, hosts, project: Project):
        self.fleet, self.hosts, self.project = fleet, hosts, project

    def sh(self, name: str, command: str) -> str:
        return self.fleet.exec(self.hosts[name], command).stdout

    def ctl(self, name: str, command: str) -> object:
        return json.loads(self.sh(name, f"timeout 60 rabbitmqctl -q {command} --formatter json"))

    def queues(self, name: str = SEED) -> dict[str, dict]:
        return {q["name"]: q for q in self.ctl(name, "list_queues -p demo_proj name type messages")}

    def running_nodes(self, name: str) -> set[str]:
        return set(self.ctl(name, "cluster_status")["running_nodes"])

    def settings(self) -> str:
        return hashlib.sha256(self.sh(SEED, f"cat {SETTINGS}").encode()).hexdigest()

    def send(self, count: int) -> None:
        code = ("from demo_proj.celery import app\n"
                f"for _ in range({count}): app.send_task('demo_proj.tasks.add', args=[1, 2])")
        self.sh(SEED, f"{APP} -c {shlex.quote(code)}")

    def deploy(self, inventory: dict):
        self.project.data["hosts"] = inventory
        self.project.write()
        return self.project.fab("deploy")


@pytest.fixture(scope="module")
def nodes(fleet, tmp_path_factory):
    """gr-m1 deployed alone, its workers stopped and WAITING tasks in its classic queue celery."""
    # the seed too with its supervisord stopped: the image's beat, on an account its new node does
    # not have yet, was refused (ACCESS_REFUSED) until the deploy made it, and went FATAL when the
    # broker step took long (103 s in a fresh make test); the deploy starts supervisord itself
    with ThreadPoolExecutor(len(MQ)) as pool:
        hosts = dict(zip(MQ, pool.map(lambda name: start_rabbitmq_node(fleet, name), MQ), strict=True))
    try:
        project = Project(fleet, tmp_path_factory.mktemp("grow"), single(hosts))
        project.data["broker"]["kind"] = "rabbitmq"
        found = Nodes(fleet, hosts, project)
        run = found.deploy(single(hosts))
        assert run.returncode == 0, run.output
        stopped = project.fab("stop-celery")
        assert stopped.returncode == 0, stopped.output
        found.send(WAITING)
        assert found.queues()["celery"]["messages"] == WAITING
        yield found
    finally:
        for host in hosts.values():
            fleet.remove(host)


def test_growing_a_host_with_classic_queues_into_a_cluster_is_refused_and_changes_nothing(nodes):
    settings = nodes.settings()
    run = nodes.deploy(grown(nodes.hosts))
    assert run.returncode != 0, run.output
    said = " ".join(run.output.split())
    assert f"{SEED} holds classic queues in the vhost demo_proj (celery: {WAITING} messages)" in said, run.output
    assert f"on {SEED} `rabbitmqctl delete_queue -p demo_proj celery`" in said, run.output
    assert "nothing was changed on any node" in said, run.output
    assert "Traceback" not in run.output
    # nothing changed: no node joined or got the cluster's cookie, the queue and its tasks are
    # where they were, the settings too
    assert all(counts["changed"] == 0 for counts in run.recap().values()), run.output
    assert nodes.running_nodes(SEED) == {f"rabbit@{SEED}"}
    for name in MQ:
        assert nodes.sh(name, f"ls {COOKIE} 2>&1 || true").strip().endswith("No such file or directory")
    assert nodes.queues()["celery"] == {"name": "celery", "type": "classic", "messages": WAITING}
    assert nodes.settings() == settings


def test_drained_and_deleted_as_it_says_the_next_deploy_forms_the_cluster_with_quorum_queues(nodes):
    # as the refusal says: the workers drain the queue, stop, the queue is deleted, deploy again
    nodes.project.data["hosts"] = single(nodes.hosts)
    nodes.project.write()
    started = nodes.project.fab("start-celery")
    assert started.returncode == 0, started.output
    assert wait_for(lambda: nodes.queues()["celery"]["messages"] == 0, timeout=60), nodes.queues()
    stopped = nodes.project.fab("stop-celery")
    assert stopped.returncode == 0, stopped.output
    nodes.sh(SEED, "rabbitmqctl -q delete_queue -p demo_proj celery")
    run = nodes.deploy(grown(nodes.hosts))
    assert run.returncode == 0, run.output
    everyone = {f"rabbit@{name}" for name in MQ}
    assert nodes.running_nodes("gr-m3") == everyone
    # the worker runs again (the deploy starts what a changed configuration runs), declares its
    # queue as a quorum queue, and takes a task sent with the new settings
    assert wait_for(lambda: nodes.queues().get("celery", {}).get("type") == "quorum", timeout=60), nodes.queues()
    out = nodes.sh(SEED, f"{APP} -m demo_proj.sendtask add 2 3")
    assert json.loads(out.strip().splitlines()[-1]) == 5
