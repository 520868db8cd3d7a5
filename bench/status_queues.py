"""`fab status` on one host with the queue view (this tree) beside the same without it (another
checkout given by --baseline, e.g. a `git worktree add` of the commit before), on the same deployed
host, in turns.

    .venv/bin/python bench/status_queues.py --baseline DIR [--runs 10] [--broker rabbitmq --suite trixie]
    .venv/bin/python bench/status_queues.py --baseline DIR --cluster [--runs 10]

Starts one test host (default Debian 12 with Redis; the broker, beat and two pools: celery on queue celery, exports
on queues exports and bulk), deploys it with this tree, then runs `fab status` RUNS times
with each tree, alternating, each run a new process as a user would run it; prints the
median and mean seconds of each and their ratio. On RabbitMQ it also times, on the host, the
CLI call that the status script makes now (`rabbitmqctl list_queues`) beside the ping it made
before (`rabbitmq-diagnostics ping`). With --cluster: three Debian 13 hosts form a RabbitMQ
cluster (bqc1 a node, beat and the pool celery; bqc2 a node and the pool exports; bqc3 a node
only), `fab status` asks all three, and on bqc3 the node's `rabbitmqctl cluster_status` is timed
beside the AMQP read of the queues (tasks/scripts/amqp_queues.py). The load average is printed
before and after the timed runs. The hosts are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from testhost.harness import Fleet, cleanup_stale, ensure_images  # noqa: E402

EXAMPLE = ROOT / "examples" / "demo_proj"
HOST = "bq1"
CLUSTER = ("bqc1", "bqc2", "bqc3")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--baseline", required=True,
                        help="another checkout of fabcelery to compare with (run by this virtualenv's fab -r DIR)")
    parser.add_argument("--broker", default="redis", choices=("redis", "rabbitmq"))
    parser.add_argument("--suite", default="bookworm", choices=("bookworm", "trixie"))
    parser.add_argument("--cluster", action="store_true",
                        help="a three-node RabbitMQ cluster of Debian 13 hosts instead of one host")
    options = parser.parse_args()
    if options.cluster:
        options.broker, options.suite = "rabbitmq", "trixie"
    cleanup_stale()
    ensure_images((options.suite,))
    work = Path(tempfile.mkdtemp(prefix="bench-queues-"))
    fleet = Fleet(work / "fleet")
    try:
        if options.cluster:
            hosts = {name: fleet.start(name, options.suite) for name in CLUSTER}
            for name in CLUSTER[:2]:
                fleet.put_tree(hosts[name], EXAMPLE, "/opt/arches/demo_proj", owner="root:root")
            places = {name: {"roles": ["broker"], "internal_address": hosts[name].internal_ip} for name in CLUSTER}
            places[CLUSTER[0]].update(roles=["broker", "worker", "beat"], pools=["celery"])
            places[CLUSTER[1]].update(roles=["broker", "worker"], pools=["exports"])
        else:
            host = fleet.start(HOST, options.suite)
            fleet.put_tree(host, EXAMPLE, "/opt/arches/demo_proj", owner="root:root")
            places = {HOST: {"roles": ["broker", "worker", "beat"]}}
        inventory = work / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({
            "project": {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
                        "user": "arches", "requirements": "requirements.txt"},
            "broker": {"kind": options.broker},
            "celery": {"app": "demo_proj.celery", "concurrency": 2, "stopwaitsecs": 60,
                       "pools": {"celery": {"queues": ["celery"]}, "exports": {"queues": ["exports", "bulk"]}}},
            "hosts": places,
        }, sort_keys=False))
        env = {**os.environ, "FABCELERY_INVENTORY": str(inventory)}
        fab = str(Path(sys.executable).parent / "fab")

        def run(root: str, *args: str) -> float:
            started = time.monotonic()
            done = subprocess.run([fab, "-r", root, "-S", str(fleet.ssh_config_path), *args],
                                  capture_output=True, text=True, env=env, timeout=900)
            seconds = time.monotonic() - started
            if done.returncode != 0:
                sys.exit(f"fab {' '.join(args)} with {root} failed:\n{done.stdout}{done.stderr}")
            return seconds

        run(str(ROOT), "deploy")
        time.sleep(20)     # the workers just started
        trees = {"queues": str(ROOT), "baseline": options.baseline}
        times: dict[str, list[float]] = {name: [] for name in trees}
        print(f"load average before the timed runs: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        for _ in range(options.runs):
            for name, root in trees.items():
                times[name].append(run(root, "status"))
        print(f"load average after the timed runs: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        for name, values in times.items():
            print(f"{name:9} median {statistics.median(values):.3f} s  mean {statistics.mean(values):.3f} s  "
                  f"runs: {' '.join(f'{v:.2f}' for v in values)}")
        ratio = statistics.median(times["queues"]) / statistics.median(times["baseline"])
        print(f"ratio of the medians (queues / baseline): {ratio:.2f}")
        if options.cluster:
            # on a node: the CLI call every node makes, and the AMQP read that the queue view adds
            amqp = (ROOT / "tasks" / "scripts" / "amqp_queues.py").read_text()
            calls = {"rabbitmqctl cluster_status": "rabbitmqctl -q cluster_status --formatter json",
                     "amqp_queues.py (AMQP)": "/usr/bin/python3 -I -S -c " + shlex.quote(amqp) + " 127.0.0.1 5672 "
                                              "demo_proj demo_proj /var/lib/fabcelery/demo_proj/broker-password "
                                              "celery exports bulk"}
            on_host(fleet, CLUSTER[2], calls, options.runs)
        elif options.broker == "rabbitmq":
            calls = {"rabbitmqctl list_queues": "rabbitmqctl -q list_queues -p demo_proj name messages_ready "
                                                "messages_unacknowledged consumers --formatter json",
                     "rabbitmq-diagnostics ping": "rabbitmq-diagnostics -q ping"}
            on_host(fleet, HOST, calls, options.runs)
    finally:
        fleet.remove_all()


def on_host(fleet: Fleet, host: str, calls: dict[str, str], runs: int) -> None:
    """Time each command on the host, RUNS times in turns; print the medians."""
    cli: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, command in calls.items():
            out = fleet.exec(host, "/usr/bin/python3 -c 'import subprocess, sys, time; t = time.monotonic(); "
                                   "subprocess.run(sys.argv[1], shell=True, stdout=subprocess.DEVNULL, check=True); "
                                   "print(time.monotonic() - t)' " + shlex.quote(command)).stdout
            cli[name].append(float(out.strip()))
    for name, values in cli.items():
        print(f"on {host}: {name:26} median {statistics.median(values):.3f} s  "
              f"runs: {' '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
