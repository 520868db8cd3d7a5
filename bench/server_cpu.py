"""CPU time a server spends per `ssh HOST true`, `fab status` and no-op `fab deploy`.

    .venv/bin/python bench/server_cpu.py [--runs 10] [--bare]

Why bench.py's times grow with the number of hosts on one machine: here every test
server is a container on the same 2 CPUs as fab itself, so what each server spends on a
run (sshd's login, sudo, the command) adds up, where real servers would each spend it on
their own CPUs. This starts one deployed test host and reads its container's CPU time
(the cgroup's cpu.stat or cpuacct.usage) around `--runs` runs of each command, and fab's
own CPU time (the client side, per process). pyinfra's `exec -- true` (the 100-host
bench's reference, bench.py --scale) is measured beside them.

--bare: the host as bench.py --scale has them (the project's code, nothing deployed), with
`fab status` and `fab deploy --dry-run`, instead of a deployed host's no-op deploy.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import compare  # noqa: E402

from bench import Bench, check, inventory_for, start_hosts  # noqa: E402
from testhost.harness import Fleet, cleanup_stale, ensure_images  # noqa: E402


def cgroup_usage(container: str):
    """A function that reads the container's CPU time in seconds (cgroup v1 or v2), or None."""
    cid = subprocess.run(["podman", "inspect", "-f", "{{.Id}}", container], capture_output=True,
                         text=True).stdout.strip()
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--bare", action="store_true", help="a host with nothing deployed (as bench.py --scale)")
    args = parser.parse_args()
    print("installing pyinfra into bench/.venv-compare (once) ...", flush=True)
    compare.ensure_tools()
    ensure_images(["trixie"])
    cleanup_stale()
    with tempfile.TemporaryDirectory(prefix="fabcelery-cpu-") as tmp, Fleet(Path(tmp) / "fleet") as fleet:
        workdir = Path(tmp)
        host = start_hosts(fleet, ["cpu1"], "trixie")[0]
        inventory = inventory_for(workdir / "inventory.yaml", {"cpu1": {"roles": ["broker", "worker", "beat"]}})
        bench = Bench(fleet, inventory, secrets.token_urlsafe(24), workdir)
        if not args.bare:
            check(bench.fab("deploy")[1], "fab deploy")
        usage = cgroup_usage(host.container)
        if usage is None:
            print("no cgroup CPU accounting found for the container")
            return 1
        ssh = ["ssh", "-F", str(fleet.ssh_config_path), "cpu1"]
        pyinfra_inventory = workdir / "pyinfra_inventory.py"
        pyinfra_inventory.write_text(f"hosts = [('cpu1', {{'ssh_config_file': {str(fleet.ssh_config_path)!r}}})]\n")
        commands = {
            "ssh HOST true": ssh + ["true"],
            "ssh HOST sudo -n true": ssh + ["sudo -n true"],
            "pyinfra INVENTORY exec -- true": [str(compare.VENV / "bin" / "pyinfra"), "--yes", str(pyinfra_inventory),
                                               "exec", "--", "true"],
            "fab status": None,
            **({"fab deploy --dry-run": None} if args.bare else {"fab deploy (no-op)": None}),
        }
        rows = []
        for name, argv in commands.items():
            before_server = usage()
            before_client = resource.getrusage(resource.RUSAGE_CHILDREN)
            for _ in range(args.runs):
                if argv:
                    subprocess.run(argv, check=True, capture_output=True, env=bench.env)
                else:
                    done = bench.fab("-H", "cpu1", *name.split()[1:3 if args.bare else 2])[1]
                    # a bare host's status finds nothing running (exit 1); it must have answered
                    if not (args.bare and name == "fab status" and "MISSING" in done.stdout):
                        check(done, name)
            after_client = resource.getrusage(resource.RUSAGE_CHILDREN)
            server = (usage() - before_server) / args.runs
            client = ((after_client.ru_utime - before_client.ru_utime)
                      + (after_client.ru_stime - before_client.ru_stime)) / args.runs
            rows.append((name, server, client))
    print(f"CPU time per run, mean of {args.runs} (`.venv/bin/python bench/server_cpu.py --runs {args.runs}"
          f"{' --bare' if args.bare else ''}`), {os.cpu_count()} CPUs, "
          f"{'a bare host (nothing deployed)' if args.bare else 'a deployed host'}:\n")
    print("| command | server (its container) | client (the process) |")
    print("| --- | ---: | ---: |")
    for name, server, client in rows:
        print(f"| `{name}` | {server * 1000:.0f} ms | {client * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
