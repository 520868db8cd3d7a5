"""`fab status` on one host with the queue view (this tree) beside the same without it (another
checkout given by --baseline, e.g. a `git worktree add` of the commit before), on the same deployed
host, in turns.

    .venv/bin/python bench/status_queues.py --baseline DIR [--runs 10] [--broker rabbitmq --suite trixie]

Starts one test host (default Debian 12 with Redis; the broker, beat and two pools: celery on queue celery, exports
on queues exports and bulk), deploys it with this tree, then runs `fab status` RUNS times
with each tree, alternating, each run a new process as a user would run it; prints the
median and mean seconds of each and their ratio. On RabbitMQ it also times, on the host, the
CLI call that the status script makes now (`rabbitmqctl list_queues`) beside the ping it made
before (`rabbitmq-diagnostics ping`). The host is removed at the end.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--baseline", required=True,
                        help="another checkout of fabcelery to compare with (run by this virtualenv's fab -r DIR)")
    parser.add_argument("--broker", default="redis", choices=("redis", "rabbitmq"))
    parser.add_argument("--suite", default="bookworm", choices=("bookworm", "trixie"))
    options = parser.parse_args()
    cleanup_stale()
    ensure_images((options.suite,))
    work = Path(tempfile.mkdtemp(prefix="bench-queues-"))
    fleet = Fleet(work / "fleet")
    try:
        host = fleet.start(HOST, options.suite)
        fleet.put_tree(host, EXAMPLE, "/opt/arches/demo_proj", owner="root:root")
        inventory = work / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({
            "project": {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
                        "user": "arches", "requirements": "requirements.txt"},
            "broker": {"kind": options.broker},
            "celery": {"app": "demo_proj.celery", "concurrency": 2, "stopwaitsecs": 60,
                       "pools": {"celery": {"queues": ["celery"]}, "exports": {"queues": ["exports", "bulk"]}}},
            "hosts": {HOST: {"roles": ["broker", "worker", "beat"]}},
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
        for _ in range(options.runs):
            for name, root in trees.items():
                times[name].append(run(root, "status"))
        for name, values in times.items():
            print(f"{name:9} median {statistics.median(values):.3f} s  mean {statistics.mean(values):.3f} s  "
                  f"runs: {' '.join(f'{v:.2f}' for v in values)}")
        ratio = statistics.median(times["queues"]) / statistics.median(times["baseline"])
        print(f"ratio of the medians (queues / baseline): {ratio:.2f}")
        if options.broker == "rabbitmq":
            calls = {"rabbitmqctl list_queues": "rabbitmqctl -q list_queues -p demo_proj name messages_ready "
                                                "messages_unacknowledged consumers --formatter json",
                     "rabbitmq-diagnostics ping": "rabbitmq-diagnostics -q ping"}
            cli: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(options.runs):
                for name, command in calls.items():
                    out = fleet.exec(HOST, "/usr/bin/python3 -c 'import subprocess, sys, time; t = time.monotonic(); "
                                           "subprocess.run(sys.argv[1], shell=True, stdout=subprocess.DEVNULL); "
                                           "print(time.monotonic() - t)' " + shlex.quote(command)).stdout
                    cli[name].append(float(out.strip()))
            for name, values in cli.items():
                print(f"on the host: {name:26} median {statistics.median(values):.3f} s  "
                      f"runs: {' '.join(f'{v:.2f}' for v in values)}")
    finally:
        fleet.remove_all()


if __name__ == "__main__":
    main()
