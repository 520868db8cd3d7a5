"""One host across a WAN: `ssh HOST true`, `fab status` and a no-op `fab deploy` through a local
delay proxy (bench/delay_proxy.py: each direction delayed by RTT/2), in turns.

    .venv/bin/python bench/rtt.py [--rtt 50] [--runs 5]

Starts one Debian 13 test host with the example project's code, deploys it directly (no
delay), then writes an ssh_config and a known_hosts of its own that reach the host through the
proxy, and times each command RUNS times in turns, each a new process. Prints the medians, the
ratios to `ssh HOST true` through the same proxy, the CPU seconds each used on this side (user +
system of the command and its children), and the round trips each connection waited for
(counted at the proxy: the times the talk turned from the server back to the client). The host is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import delay_proxy  # noqa: E402

from testhost.harness import Fleet, cleanup_stale, ensure_images  # noqa: E402

EXAMPLE = ROOT / "examples" / "demo_proj"
HOST = "rtt1"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rtt", type=float, default=50, help="round-trip time to add, in ms")
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    cleanup_stale()
    ensure_images(("trixie",))
    work = Path(tempfile.mkdtemp(prefix="bench-rtt-"))
    fleet = Fleet(work / "fleet")
    try:
        host = fleet.start(HOST, "trixie")
        fleet.put_tree(host, EXAMPLE, "/opt/arches/demo_proj", owner="root:root")
        inventory = work / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({
            "project": {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
                        "user": "arches", "requirements": "requirements.txt"},
            "broker": {"kind": "redis"},
            "celery": {"app": "demo_proj.celery", "concurrency": 2},
            "hosts": {HOST: {"roles": ["broker", "worker", "beat"]}},
        }, sort_keys=False))
        env = {**os.environ, "FABCELERY_INVENTORY": str(inventory)}
        fab = str(Path(sys.executable).parent / "fab")

        cpu: dict[str, list[float]] = {}

        def run(args: list[str], name: str = "") -> float:
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.monotonic()
            done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
            seconds = time.monotonic() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.setdefault(name, []).append(after.ru_utime - used.ru_utime + after.ru_stime - used.ru_stime)
            if done.returncode != 0:
                sys.exit(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
            return seconds

        run([fab, "-r", str(ROOT), "-S", str(fleet.ssh_config_path), "deploy"])
        port = delay_proxy.start(host.port, options.rtt / 2000)
        real = f"[127.0.0.1]:{host.port}"
        known = work / "known_hosts_proxy"
        known.write_text("".join(line.replace(real, f"[127.0.0.1]:{port}", 1) + "\n"
                                 for line in fleet.known_hosts_path.read_text().splitlines()
                                 if line.startswith(real + " ")))
        config = work / "ssh_config_proxy"
        config.write_text(fleet.ssh_config_path.read_text().replace(f"Port {host.port}", f"Port {port}")
                          .replace(str(fleet.known_hosts_path), str(known)))
        commands = {
            "ssh HOST true": ["ssh", "-F", str(config), HOST, "true"],
            "fab status": [fab, "-r", str(ROOT), "-S", str(config), "status"],
            "fab deploy (no-op)": [fab, "-r", str(ROOT), "-S", str(config), "deploy"],
        }
        trips = {}
        for name, args in commands.items():
            before = len(delay_proxy.TRACES)
            run(args)       # warm-up; and the round trips of its connections, counted at the proxy
            trips[name] = [delay_proxy.round_trips(t) for t in delay_proxy.TRACES[before:]]
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(options.runs):
            for name, args in commands.items():
                times[name].append(run(args, name))
        print(f"round trip added: {options.rtt:g} ms; {options.runs} runs each, in turns; "
              f"load average before: {os.getloadavg()[0]:.1f}")
        ssh = statistics.median(times["ssh HOST true"])
        print("| command | median (s) | / ssh HOST true | CPU here (s) | round trips per connection | runs (s) |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"| {name} | {median:.3f} | {median / ssh:.2f}x | {statistics.median(cpu[name]):.3f} | "
                  f"{', '.join(map(str, trips[name]))} | "
                  f"{', '.join(f'{v:.2f}' for v in values)} |")
    finally:
        fleet.remove_all()


if __name__ == "__main__":
    main()
