"""Planning cost: a no-op deploy's pure-Python time per host (rendering the configs, diffing them
and every other resource against the facts), without SSH.

    .venv/bin/python bench/plan_cost.py [--sizes 1,10,100] [--runs 5]

A fleet of N hosts (the first runs the broker, a worker and beat; the others a worker each) and,
for each host, the facts its probe returns right after a deploy (tests/unit/conftest.py's
deployed_facts, the record the unit tests check a no-op plan against); then plan_deploy for
every host (with the host's Target built first, as `fab deploy` builds it for each host), as
`fab deploy` does once a host's probe has answered. Prints the median of RUNS
timings of the whole fleet's planning and the time per host, after one warm-up run (making the
facts plans each host once already: the templates are compiled before the timing starts, so
the first plan of a `fab` process, which compiles them, is not in these figures); fails if a
plan is not a no-op.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.deploy import plan_deploy  # noqa: E402
from tasks.target import Target  # noqa: E402
from tests.unit.conftest import PASSWORD, deployed_facts, make_inventory  # noqa: E402


def fleet(size: int):
    hosts = {"h0": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.1"}}
    hosts |= {f"h{i}": {"roles": ["worker"]} for i in range(1, size)}
    inventory = make_inventory(hosts=hosts)
    return inventory, [(inventory.hosts[name], deployed_facts(inventory, name)) for name in hosts]


def plan_all(inventory, hosts) -> float:
    started = time.perf_counter()
    for host, facts in hosts:
        plans = plan_deploy(Target.of(inventory, host), facts, PASSWORD)
        changing = [p.name for p in plans if p.actions or p.error]
        if changing:
            sys.exit(f"{host.name}: not a no-op plan: {', '.join(changing)} would change")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    print("| hosts | planning, whole fleet (ms) | per host (ms) | spread (ms) |")
    print("| ---: | ---: | ---: | --- |")
    for size in (int(s) for s in options.sizes.split(",")):
        inventory, hosts = fleet(size)
        plan_all(inventory, hosts)     # warm-up
        times = [plan_all(inventory, hosts) for _ in range(options.runs)]
        median = statistics.median(times)
        print(f"| {size} | {median * 1000:.1f} | {median * 1000 / size:.2f} | "
              f"{min(times) * 1000:.1f}-{max(times) * 1000:.1f} |", flush=True)


if __name__ == "__main__":
    main()
