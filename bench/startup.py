"""`fabcelery status` beside `fab status`: the same task on the same host, each run a new
process, the two commands in turns (so that a busy machine weighs on both alike).

    .venv/bin/python bench/startup.py -S .demo/ssh_config --runs 30 \
        --fabcelery /tmp/venv/bin/fabcelery      # installed with pip install . (default: .venv's)

`fab` runs this checkout's fabfile with ./inventory.yaml; `fabcelery` the same inventory
(--inventory), from another directory. Prints the median, min and max of each, and
their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)}: exit status {done.returncode}\n{done.stdout}{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-S", "--ssh-config", required=True)
    parser.add_argument("--inventory", default=str(ROOT / "inventory.yaml"))
    parser.add_argument("--fabcelery", default=str(BIN / "fabcelery"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--task", default="status", help="what both run (--list: the start-up alone, no SSH)")
    args = parser.parse_args()
    ssh_config = str(Path(args.ssh_config).resolve())
    elsewhere = Path(tempfile.mkdtemp(prefix="fabcelery-startup-"))
    commands = {
        f"fab {args.task}": ([str(BIN / "fab"), "-S", ssh_config, args.task], ROOT),
        f"fabcelery {args.task}": ([args.fabcelery, "-S", ssh_config, "--inventory", args.inventory, args.task],
                                   elsewhere),
    }
    for command, cwd in commands.values():   # a warm-up run each (and a check that it works)
        timed(command, cwd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, (command, cwd) in commands.items():
            times[name].append(timed(command, cwd))
    for name, values in times.items():
        print(f"{name:<20} median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f}, "
              f"{len(values)} runs)")
    ratio = statistics.median(times[f"fabcelery {args.task}"]) / statistics.median(times[f"fab {args.task}"])
    print(f"{'fabcelery / fab':<20} {ratio:.3f}")


if __name__ == "__main__":
    main()
