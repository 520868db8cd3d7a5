"""What `fab status` costs on 1, 4 and 8 real servers, and what it does on one.

    make bench                                  # or:
    .venv/bin/python bench/bench.py [--runs 9] [--write bench/RESULTS.md]

Starts 8 test hosts (podman containers with systemd and sshd, testhost/), deploys the
example project to them once (bench1: Redis, a worker and beat; the others: workers),
then runs `fab status` as a user would (a new `fab` process each time, real SSH),
on 1, 4 and 8 of them, in turns, and reports the median wall time of each. Then it
counts, on one host, the SSH connections and remote commands of one `fab status`:
from the client (paramiko's handshakes and exec requests, bench/count_ssh.py) and
from the server (sshd's accepted logins and sudo's commands in the journal).
The hosts are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testhost.__main__ import demo_fleet, save_state  # noqa: E402
from testhost.harness import Fleet, cleanup_stale, ensure_images  # noqa: E402

FAB = str(Path(sys.executable).parent / "fab")
SIZES = (1, 4, 8)
HOSTS = [f"bench{i}" for i in range(1, max(SIZES) + 1)]
EXAMPLE = ROOT / "examples" / "demo_proj"
SETTLE = 60  # seconds between the deploy and the timed runs
HISTORY = "## Earlier runs"  # a section of RESULTS.md, kept when --write replaces the rest


class Bench:
    def __init__(self, fleet: Fleet, inventory: Path):
        self.fleet = fleet
        self.env = {**os.environ, "FABCELERY_INVENTORY": str(inventory)}

    def fab(self, *args: str, counts: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
        prefix = [sys.executable, str(ROOT / "bench" / "count_ssh.py"), str(counts)] if counts else [FAB]
        command = [*prefix, "-r", str(ROOT), "-S", str(self.fleet.ssh_config_path), *args]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=1800)
        return time.perf_counter() - started, done

    def status(self, hosts: list[str]) -> tuple[float, float]:
        """(wall seconds, CPU seconds of the fab process) of one `fab -H HOSTS status`."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds, done = self.fab("-H", ",".join(hosts), "status")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        named = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
        if done.returncode != 0 or not set(hosts) <= named:
            raise SystemExit(f"fab status on {', '.join(hosts)} failed:\n{done.stdout}{done.stderr}")
        return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def server_cpu(self, host: str, runs: int = 10) -> dict[str, float] | None:
        """CPU a host spends (its container's cgroup) per `fab status`, and per bare `ssh HOST sudo -n true`."""
        usage = cgroup_usage(self.fleet.hosts[host].container)
        if usage is None:
            return None
        ssh = ["ssh", "-F", str(self.fleet.ssh_config_path), host, "sudo -n true"]
        result = {}
        for what, run in (("status", lambda: self.status([host])),
                          ("ssh_sudo", lambda: subprocess.run(ssh, check=True, capture_output=True))):
            start = usage()
            for _ in range(runs):
                run()
            result[what] = (usage() - start) / runs
        return result

    def journal_since(self, host: str, since: int) -> str:
        return self.fleet.exec(host, f"journalctl --no-pager -o cat --since @{since}").stdout


def cgroup_usage(container: str):
    """A function that reads the container's CPU time in seconds (cgroup v1 or v2), or None."""
    cid = subprocess.run(["podman", "inspect", "-f", "{{.Id}}", container], capture_output=True, text=True).stdout
    cid = cid.strip()
    candidates = [
        (Path(f"/sys/fs/cgroup/cpuacct/libpod_parent/libpod-{cid}/cpuacct.usage"), 1e-9),
        (Path(f"/sys/fs/cgroup/cpuacct/machine.slice/libpod-{cid}.scope/cpuacct.usage"), 1e-9),
        (Path(f"/sys/fs/cgroup/machine.slice/libpod-{cid}.scope/cpu.stat"), 1e-6),
        (Path(f"/sys/fs/cgroup/libpod_parent/libpod-{cid}/cpu.stat"), 1e-6),
    ]
    for path, unit in candidates:
        if path.exists():
            def read(path=path, unit=unit) -> float:
                text = path.read_text()
                value = text.split("usage_usec")[1].split()[0] if "usage_usec" in text else text.split()[0]
                return int(value) * unit
            return read
    return None


def start_fleet(fleet: Fleet, suite: str) -> Path:
    with ThreadPoolExecutor(4) as pool:
        started = list(pool.map(lambda name: fleet.adopt(name) or fleet.start(name, suite=suite), HOSTS))
    for host in started:
        fleet.put_tree(host, EXAMPLE, "/opt/arches/demo_proj")
    inventory = fleet.state_dir / "inventory.yaml"
    hosts = {"bench1": {"roles": ["broker", "worker", "beat"], "internal_address": started[0].internal_ip}}
    hosts.update({name: {"roles": ["worker"]} for name in HOSTS[1:]})
    inventory.write_text(yaml.safe_dump({
        "project": {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
                    "user": "arches", "requirements": "requirements.txt"},
        "broker": {"kind": "redis"},
        "celery": {"app": "demo_proj.celery", "concurrency": 2, "stopwaitsecs": 60},
        "hosts": hosts,
    }, sort_keys=False))
    return inventory


def count_one(bench: Bench, host: str, workdir: Path) -> dict:
    """One `fab -H host status`: SSH connections and commands, seen from both ends."""
    time.sleep(1.1)                      # the journal's --since has whole seconds
    since = int(bench.fleet.exec(host, "date +%s").stdout)
    time.sleep(1.1)
    counts_file = workdir / f"counts-{host}.json"
    _, done = bench.fab("-H", host, "status", counts=counts_file)
    if done.returncode != 0:
        raise SystemExit(f"fab status on {host} failed:\n{done.stdout}{done.stderr}")
    client = json.loads(counts_file.read_text())
    time.sleep(0.5)
    journal = bench.journal_since(host, since)
    return {
        "host": host,
        "connections": client.get("connections", 0),
        "commands": client.get("commands", 0),
        "sftp": client.get("subsystems", 0),
        "sshd_logins": journal.count("Accepted publickey for deploy"),
        "sudo_commands": sum(1 for line in journal.splitlines() if "COMMAND=" in line and "deploy :" in line),
    }


def median_table(times: dict[int, list[float]], cpu: dict[int, list[float]]) -> list[str]:
    base = statistics.median(times[1])
    lines = ["| hosts | median | min | max | vs 1 host | fab's own CPU (median) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size in SIZES:
        values = times[size]
        median = statistics.median(values)
        lines.append(f"| {size} | {median:.3f} s | {min(values):.3f} s | {max(values):.3f} s | {median / base:.2f}x "
                     f"| {statistics.median(cpu[size]):.3f} s |")
    return lines


def target_line(times: dict[int, list[float]]) -> str:
    """Issue 4's target: on 4 and on 8 hosts, at most 1.5x the time on one host."""
    base = statistics.median(times[1])
    verdicts = [f"{size} hosts {statistics.median(times[size]) / base:.2f}x "
                f"({'met' if statistics.median(times[size]) <= 1.5 * base else 'NOT met'})" for size in SIZES[1:]]
    return "Target: at most 1.5x the time on one host. " + "; ".join(verdicts) + "."


def cpu_notes(cpu: dict[int, list[float]], server: dict | None) -> list[str]:
    """Where the time of the bigger fleets goes, when every server shares this machine's CPUs."""
    if not server:
        return ["(CPU per server not measured: no cgroup CPU accounting found for the containers.)"]
    client = (statistics.median(cpu[max(SIZES)]) - statistics.median(cpu[1])) / (max(SIZES) - 1)
    per_host = server["status"] + client
    cpus = os.cpu_count() or 1
    return [
        f"CPU per host and `fab status`: {server['status'] * 1000:.0f} ms on the server (bench2, its "
        f"container's cgroup, mean of 10), of which a bare `ssh HOST sudo -n true` costs "
        f"{server['ssh_sudo'] * 1000:.0f} ms; {client * 1000:.0f} ms in fab (the table above: its CPU on "
        f"{max(SIZES)} hosts less on 1, per host). Here all servers share this machine's {cpus} CPUs with "
        f"each other and with fab, so each host beyond the first adds about {per_host * 1000:.0f} ms of CPU, "
        f"some {per_host * 1000 / cpus:.0f} ms of wall time; on real servers, each with its own CPUs, "
        f"the servers' part runs in parallel and only fab's {client * 1000:.0f} ms per host adds up.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per fleet size (default 9)")
    parser.add_argument("--suite", default="trixie", choices=("bookworm", "trixie"), help="Debian of the hosts")
    parser.add_argument("--write", type=Path, help="also write the results as Markdown to this file")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the hosts (state in DIR) and reuse them next time; remove them with "
                             "python -m testhost down --state-dir DIR")
    args = parser.parse_args()

    ensure_images([args.suite])
    cleanup_stale()
    running = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    with contextlib.ExitStack() as stack:
        if args.keep:
            state = str(args.keep.resolve())
            fleet = demo_fleet(args.keep)
        else:
            state = stack.enter_context(tempfile.TemporaryDirectory(prefix="fabcelery-bench-"))
            fleet = stack.enter_context(Fleet(Path(state)))
        print(f"starting {len(HOSTS)} {args.suite} hosts ...", flush=True)
        others = [name for name in running.split() if name not in {fleet.container_name(h) for h in HOSTS}]
        inventory = start_fleet(fleet, args.suite)
        if args.keep:
            save_state(fleet)       # `python -m testhost down --state-dir DIR` finds them
        bench = Bench(fleet, inventory)
        print("deploying once ...", flush=True)
        seconds, deploy = bench.fab("deploy")
        if deploy.returncode != 0:
            print(deploy.stdout + deploy.stderr)
            return 1
        print(f"deployed {len(HOSTS)} hosts in {seconds:.0f} s", flush=True)

        time.sleep(SETTLE)                # the workers just (re)started: let them settle
        load = os.getloadavg()[0]                                 # before the timed runs
        startup = [bench.fab("--list")[0] for _ in range(5)]      # fab's own start, no SSH
        for size in SIZES:                                        # warm-up
            bench.status(HOSTS[:size])
        times: dict[int, list[float]] = {size: [] for size in SIZES}
        cpu: dict[int, list[float]] = {size: [] for size in SIZES}
        for run in range(args.runs):
            for size in SIZES:                                    # in turns: drift hits all sizes alike
                seconds, used = bench.status(HOSTS[:size])
                times[size].append(seconds)
                cpu[size].append(used)
            print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{s} hosts {times[s][-1]:.3f} s" for s in SIZES),
                  flush=True)
        counts = [count_one(bench, host, Path(state)) for host in ("bench2", "bench1")]
        server = bench.server_cpu("bench2")

    command = ".venv/bin/python " + shlex.join(["bench/bench.py", *sys.argv[1:]])
    report = [
        "# bench: `fab status` on 1, 4 and 8 hosts",
        "",
        f"Made with `{command}` on {datetime.date.today().isoformat()}: "
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
        f"{len(HOSTS)} Debian ({args.suite}) test hosts on this machine (podman, systemd, sshd), "
        f"{len(others)} other container(s) running at the start (other work on the machine), 1-minute load "
        f"average {load:.1f} before the timed runs. "
        f"Each run is a new `fab` process (`fab -H HOSTS status`), real SSH to every host; "
        f"{args.runs} timed runs per size, in turns, "
        "after one warm-up run each.",
        "",
        *median_table(times, cpu),
        "",
        target_line(times),
        "",
        f"For comparison, `fab --list` (starting fab, no SSH): median {statistics.median(startup):.3f} s.",
        "",
        *cpu_notes(cpu, server),
        "",
        "One `fab -H HOST status`, counted from the client (paramiko: handshakes, exec requests, "
        "SFTP sessions) and from the server (journal: sshd's accepted logins, sudo's commands):",
        "",
        "| host | SSH connections | remote commands | SFTP | sshd logins | sudo commands |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {c['host']} | {c['connections']} | {c['commands']} | {c['sftp']} | {c['sshd_logins']} | "
          f"{c['sudo_commands']} |" for c in counts),
    ]
    text = "\n".join(report) + "\n"
    print("\n" + text)
    if args.write:
        kept = args.write.read_text().partition(HISTORY)[2] if args.write.exists() else ""
        args.write.write_text(text + (f"\n{HISTORY}{kept}" if kept else ""))   # the notes on earlier runs stay
        print(f"written to {args.write}")
    print("timings (s): " + json.dumps({s: [round(t, 3) for t in v] for s, v in times.items()}))
    print("command: " + shlex.join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
