"""Issue 20, 2(c): does a worker with Arches' pins (celery 5.3.6, kombu 5.3.x) stop taking tasks
after Redis restarts under it? An experiment on one test host, run by hand:

    .venv/bin/python bench/redis_restart_stall.py [--rounds 3] [--kombu 5.3.7] [--suite bookworm]

Starts one host (Redis, beat and the worker), pins celery 5.3.6 and kombu in the example
project's requirements, deploys it, prints the virtualenv's `pip freeze` (what was really
installed), then ROUNDS times: tasks are sent and drained (the worker takes tasks), Redis is
restarted with systemctl, and once it answers, tasks are sent again; it prints how long the queue
took to drain (or that it did not within --wait seconds), the worker's pid before and after, and
what `fab status` said. The host is removed at the end.
"""

from __future__ import annotations

import argparse
import os
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
HOST = "rs1"
PASSWORD_FILE = "/var/lib/fabcelery/demo_proj/broker-password"
PYTHON = "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python"
REDIS = f'REDISCLI_AUTH="$(cat {PASSWORD_FILE})" redis-cli --user demo_proj'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kombu", default="5.3.7")
    parser.add_argument("--suite", default="bookworm", choices=("bookworm", "trixie"))
    parser.add_argument("--wait", type=int, default=90, help="seconds to wait for the queue to drain")
    options = parser.parse_args()
    cleanup_stale()
    ensure_images((options.suite,))
    work = Path(tempfile.mkdtemp(prefix="bench-redis-restart-"))
    fleet = Fleet(work / "fleet")
    try:
        host = fleet.start(HOST, options.suite)
        fleet.put_tree(host, EXAMPLE, "/opt/arches/demo_proj", owner="root:root")
        fleet.exec(host, "sed -i 's/^celery==.*/celery==5.3.6/' /opt/arches/demo_proj/requirements.txt && "
                         f"echo 'kombu=={options.kombu}' >> /opt/arches/demo_proj/requirements.txt")
        inventory = work / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({
            "project": {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
                        "user": "arches", "requirements": "requirements.txt"},
            "broker": {"kind": "redis"},
            "celery": {"app": "demo_proj.celery", "concurrency": 2, "stopwaitsecs": 60},
            "hosts": {HOST: {"roles": ["broker", "worker", "beat"]}},
        }, sort_keys=False))
        env = {**os.environ, "FABCELERY_INVENTORY": str(inventory)}
        fab = str(Path(sys.executable).parent / "fab")

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([fab, "-r", str(ROOT), "-S", str(fleet.ssh_config_path), *args],
                                  capture_output=True, text=True, env=env, timeout=1800)

        def sh(command: str) -> str:
            return fleet.exec(host, command, check=False).stdout.strip()

        # the project's virtualenv must hold the pins before the deploy (a deploy keeps what is there)
        deploy = run("deploy")
        print(deploy.stdout[-3000:] + deploy.stderr[-2000:])
        if deploy.returncode != 0:
            sys.exit("deploy failed")
        freeze = sh("/opt/arches/venv/bin/pip freeze")
        print("pip freeze on the host:", " ".join(line for line in freeze.splitlines()
                                                  if line.split("==")[0].lower() in
                                                  ("celery", "kombu", "redis", "amqp", "billiard", "vine")))
        time.sleep(15)

        def send(count: int) -> None:
            sh(f"{PYTHON} -c 'from demo_proj.celery import app\n"
               f"for _ in range({count}): app.send_task(\"demo_proj.tasks.add\", args=[1, 2])'")

        def waiting() -> int:
            out = sh(f"{REDIS} LLEN demo_proj:celery")
            return int(out) if out.isdigit() else -1

        def drained(bound: float) -> float | None:
            started = time.monotonic()
            while time.monotonic() - started < bound:
                if waiting() == 0:
                    return time.monotonic() - started
                time.sleep(0.5)
            return None

        def worker_pid() -> str:
            return sh("runuser -u arches -- /opt/arches/venv/bin/supervisorctl "
                      "-c /etc/supervisor/demo_proj-supervisord.conf pid celery")

        for n in range(1, options.rounds + 1):
            send(5)
            before = drained(options.wait)
            pid = worker_pid()
            sh("systemctl restart redis-server")
            while sh(f"{REDIS} PING") != "PONG":
                time.sleep(0.2)
            time.sleep(2)
            send(10)
            after = drained(options.wait)
            status = run("status")
            then = (f"NOT drained within {options.wait} s, {waiting()} waiting" if after is None
                    else f"drained in {after:.1f} s")
            first = "not drained" if before is None else f"drained in {before:.1f} s"
            print(f"round {n}: before the restart {first}; after it {then}; "
                  f"worker pid {pid} -> {worker_pid()}; fab status exit {status.returncode}", flush=True)
            if after is None:
                print(status.stdout + status.stderr)
                print(sh("tail -n 30 /var/log/celery/demo_proj-worker.log"))
    finally:
        fleet.remove_all()


if __name__ == "__main__":
    main()
