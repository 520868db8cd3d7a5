"""fabcelery against Ansible and pyinfra on the same test servers: no-op deploys, status, first deploys.

    make bench                                       # or:
    .venv/bin/python bench/bench.py [--runs 5] [--first-rounds 1] [--write bench/RESULTS.md]

1. No-op runs. Starts 8 test hosts (podman containers with systemd and sshd, testhost/)
   and deploys the example project to them with `fab deploy` (bench1: Redis, a worker
   and beat; bench2-8: workers that use bench1's Redis). Then, on 1, 4 and 8 of them, in
   turns, each repetition a new process as a user would run it: `ssh HOST true` (1 host:
   the floor), `fab status`, a no-op `fab deploy`, and the same deploy written as an
   Ansible playbook and as a pyinfra deploy (bench/compare/, installed from PyPI into
   bench/.venv-compare). Every timed deploy must report no change, or the bench stops.
   It also counts, on one host, the SSH connections and remote commands of `fab status`
   and of a no-op `fab deploy`, from the client (paramiko, bench/count_ssh.py) and from
   the server (sshd's logins and sudo's commands in the journal).
2. First deploys. Removes those hosts; then, one at a time so that they do not share the
   CPUs, deploys a fresh host with each tool, and runs the apt and pip commands that
   the deploy needs by hand over SSH on one more fresh host (the work itself, with no
   tool around it).

Prints a Markdown report (and writes it with --write); the hosts are removed at the end.

With --scale N, only this instead: N bare hosts (the example project's code copied on, nothing
deployed), each an entry of its own in the ssh_config; `fab status --parallel N` and `fab deploy
--dry-run --parallel N` beside OpenSSH (`ssh HOST true` to all at once, xargs -P N) and pyinfra
(`exec -- true`), with and without USER/LOGNAME in the environment, wall-clock and CPU seconds;
--baseline DIR times another checkout's fab as well, on the same hosts, in turns. Its section is
written below a marker of the --write file, which the other runs keep. (About 100 hosts fit a
machine of 24 GiB; each host's systemd takes inotify instances, so the run raises
fs.inotify.max_user_instances to 8 per host first if it is lower, and says so.)

With --cluster, only this instead: five fresh hosts, a three-node RabbitMQ cluster (the
role broker on three of them) and two worker hosts; the first `fab deploy` of all five,
timed, then timed no-op deploys (each must change nothing), and the SSH connections and
commands of one no-op deploy of a node and of a worker host, counted as above.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import secrets
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

import compare  # noqa: E402, I001  (bench/compare.py, beside this file)
from tasks.api import Facts, Target, load_inventory, required_packages, requirements  # noqa: E402
from testhost.__main__ import demo_fleet, save_state  # noqa: E402
from testhost.harness import Fleet, cleanup_stale, ensure_images  # noqa: E402

FAB = str(Path(sys.executable).parent / "fab")
SIZES = (1, 4, 8)
HOSTS = [f"bench{i}" for i in range(1, max(SIZES) + 1)]
EXAMPLE = ROOT / "examples" / "demo_proj"
PROJECT = {"name": "demo_proj", "path": "/opt/arches/demo_proj", "virtualenv": "/opt/arches/venv",
           "user": "arches", "requirements": "requirements.txt"}
PASSWORD_ENV = "FABCELERY_BROKER_PASSWORD"
SETTLE = 30  # seconds between the deploy and the timed runs: the workers just started
TOOLS = ("fab", "pyinfra", "ansible")
RECAP_LINE = re.compile(r"^(\S+)\s+ok=\d+ changed=(\d+) failed=(\d+)$", re.MULTILINE)
STEP_LINE = re.compile(r"^\S+\s+(\w+)\s+(?:changed|ok) \(.*?([\d.]+)s\)$", re.MULTILINE)


class BenchError(SystemExit):
    pass


def inventory_for(path: Path, hosts: dict) -> Path:
    path.write_text(yaml.safe_dump({
        "project": PROJECT,
        "broker": {"kind": "redis", "password_env": PASSWORD_ENV},
        "celery": {"app": "demo_proj.celery", "concurrency": 2, "stopwaitsecs": 60},
        "hosts": hosts,
    }, sort_keys=False))
    return path


class Bench:
    def __init__(self, fleet: Fleet, inventory: Path, password: str, workdir: Path):
        self.fleet = fleet
        self.inventory = inventory
        self.workdir = workdir
        self.env = {**os.environ, "FABCELERY_INVENTORY": str(inventory), PASSWORD_ENV: password}
        # a user's shell has no PYTHONDONTWRITEBYTECODE; with it, every fab run compiles our modules
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def fab(self, *args: str, counts: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
        prefix = [sys.executable, str(ROOT / "bench" / "count_ssh.py"), str(counts)] if counts else [FAB]
        command = [*prefix, "-r", str(ROOT), "-S", str(self.fleet.ssh_config_path), *args]
        return timed(command, self.env)

    def run(self, tool: str, hosts: list[str]) -> float:
        """One timed run of `tool` on `hosts`; stops the bench unless it succeeded and, for a
        deploy, changed nothing."""
        if tool == "ssh":
            seconds, done = timed(["ssh", "-F", str(self.fleet.ssh_config_path), hosts[0], "true"], self.env)
            check(done, "ssh true")
            return seconds
        if tool == "status":
            seconds, done = self.fab("-H", ",".join(hosts), "status")
            check(done, "fab status")
            return seconds
        if tool == "fab":
            seconds, done = self.fab("-H", ",".join(hosts), "deploy")
            check(done, "fab deploy")
            changed = {host: int(n) for host, n, _ in RECAP_LINE.findall(done.stdout)}
            if set(changed) != set(hosts) or any(changed.values()):
                raise BenchError(f"a no-op fab deploy changed something or missed a host:\n{done.stdout}")
            return seconds
        if tool == "ansible":
            compare.close_connections(self.workdir)   # cold, as fab and pyinfra always start
            argv, env = compare.ansible_run(self.workdir, hosts)
        else:
            argv, env = compare.pyinfra_run(self.workdir, hosts)
        seconds, done = timed(argv, env)
        check(done, f"{tool} deploy")
        if compare.changes(tool, done.stdout):
            raise BenchError(f"the no-op {tool} deploy changed something:\n{done.stdout[-3000:]}")
        return seconds

    def journal_since(self, host: str, since: int) -> str:
        return self.fleet.exec(host, f"journalctl --no-pager -o cat --since @{since}").stdout


def timed(argv: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    return time.perf_counter() - started, done


def check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise BenchError(f"{what} failed (exit status {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def count_one(bench: Bench, host: str, task: str) -> dict:
    """One `fab -H host TASK`: SSH connections and commands, seen from both ends."""
    time.sleep(1.1)                      # the journal's --since has whole seconds
    since = int(bench.fleet.exec(host, "date +%s").stdout)
    time.sleep(1.1)
    counts_file = bench.workdir / f"counts-{host}-{task}.json"
    _, done = bench.fab("-H", host, task, counts=counts_file)
    check(done, f"fab {task} (counted)")
    client = json.loads(counts_file.read_text())
    time.sleep(0.5)
    journal = bench.journal_since(host, since)
    return {
        "task": task, "host": host,
        "connections": client.get("connections", 0),
        "commands": client.get("commands", 0),
        "sftp": client.get("subsystems", 0),
        "sshd_logins": journal.count("Accepted publickey for deploy"),
        "sudo_commands": sum(1 for line in journal.splitlines() if "COMMAND=" in line and "deploy :" in line),
    }


def start_hosts(fleet: Fleet, names: list[str], suite: str) -> list:
    with ThreadPoolExecutor(4) as pool:
        started = list(pool.map(lambda name: fleet.adopt(name) or fleet.start(name, suite=suite), names))
    for host in started:
        fleet.put_tree(host, EXAMPLE, PROJECT["path"])
    return started


# --- a RabbitMQ cluster (--cluster) ------------------------------------------------------

CLUSTER_HOSTS = ("cmq1", "cmq2", "cmq3", "cw1", "cw2")


def count_fleet(bench: Bench, hosts: list[str]) -> dict:
    """One `fab deploy` of every host: SSH connections and commands (client), logins and sudo (all servers)."""
    time.sleep(1.1)
    since = {host: int(bench.fleet.exec(host, "date +%s").stdout) for host in hosts}
    time.sleep(1.1)
    counts_file = bench.workdir / "counts-fleet-deploy.json"
    _, done = bench.fab("deploy", counts=counts_file)
    check(done, "fab deploy (counted)")
    client = json.loads(counts_file.read_text())
    time.sleep(0.5)
    journals = [bench.journal_since(host, since[host]) for host in hosts]
    return {
        "connections": client.get("connections", 0), "commands": client.get("commands", 0),
        "sftp": client.get("subsystems", 0),
        "sshd_logins": sum(j.count("Accepted publickey for deploy") for j in journals),
        "sudo_commands": sum(1 for j in journals for line in j.splitlines()
                             if "COMMAND=" in line and "deploy :" in line),
    }


def cluster_phase(fleet: Fleet, workdir: Path, password: str, suite: str, runs: int) -> list[str]:
    print(f"starting {len(CLUSTER_HOSTS)} {suite} hosts ...", flush=True)
    started = dict(zip(CLUSTER_HOSTS, start_hosts(fleet, list(CLUSTER_HOSTS), suite), strict=True))
    hosts = {name: {"roles": ["broker"], "internal_address": started[name].internal_ip} for name in CLUSTER_HOSTS[:3]}
    hosts.update({"cw1": {"roles": ["worker", "beat"]}, "cw2": {"roles": ["worker"]}})
    inventory = inventory_for(workdir / "cluster.yaml", hosts)
    data = yaml.safe_load(inventory.read_text())
    data["broker"]["kind"] = "rabbitmq"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    bench = Bench(fleet, inventory, password, workdir)
    print("first fab deploy of the cluster ...", flush=True)
    first, done = bench.fab("deploy")
    check(done, "the first fab deploy of the cluster")
    steps = {}
    timed = r"^(\S+)\s+(\w+)\s+(?:changed|ok) \((?:.*?[;,] )?([\d.]+)s\)$"    # verify says ok when all is well
    for _host, step, seconds in re.findall(timed, done.stdout, re.M):
        steps.setdefault(step, []).append(float(seconds))
    time.sleep(SETTLE)
    noop = [bench.run("fab", list(CLUSTER_HOSTS)) for _ in range(runs + 1)][1:]   # the first: warm-up
    counts = [count_one(bench, host, "deploy") for host in ("cmq2", "cw2")]
    fleet_counts = count_fleet(bench, list(CLUSTER_HOSTS))
    lines = [
        "## A three-node RabbitMQ cluster and two worker hosts (--cluster)",
        "",
        f"First `fab deploy` of five fresh {suite} hosts (three nodes, two worker hosts): {first:.0f} s "
        "(the slowest host's steps: " + ", ".join(f"{k} {max(v):.0f} s" for k, v in steps.items()) + ").",
        f"No-op `fab deploy` of all five: median {med(noop):.2f} s over {runs} runs (min {min(noop):.2f} s, "
        f"max {max(noop):.2f} s), each `changed=0`.",
        "",
        "| one no-op deploy of | SSH connections | remote commands | SFTP | sshd logins | sudo commands |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| all five (`fab deploy`) | {fleet_counts['connections']} | {fleet_counts['commands']} | "
        f"{fleet_counts['sftp']} | {fleet_counts['sshd_logins']} | {fleet_counts['sudo_commands']} |",
        *(f"| {c['host']} alone (`fab -H {c['host']} deploy`) | {c['connections']} | {c['commands']} | {c['sftp']} | "
          f"{c['sshd_logins']} | {c['sudo_commands']} |" for c in counts),
        "",
        "sshd logins and sudo commands: on the host(s) deployed. A node deployed alone also reads, with one command "
        "each, what the other nodes keep (the shared password and cookie) and their RabbitMQ version.",
    ]
    return lines


# --- at scale (--scale N) -----------------------------------------------------------------

SCALE_STARTERS = 6      # hosts started at once (each boots systemd; more at once only queue on the CPUs)
LOGIN_VARIABLES = ("USER", "LOGNAME", "LNAME", "USERNAME")   # what getpass.getuser() reads before the passwd file
SCALE_TOOLS = ("ssh", "pyinfra", "status", "dry-run")
SCALE_COUNTED = re.compile(r"^(?:and )?(\d+) (?:more )?hosts with nothing changed", re.MULTILINE)
SCALE_RECAP = re.compile(r"^(\S+)\s+ok=\d+ changed=\d+ failed=(\d+)", re.MULTILINE)


def scale_env(env: dict, login: bool) -> dict:
    """`env` with USER and LOGNAME set to the local user (a login shell), or without any of
    getpass's variables (cron, CI jobs, systemd units)."""
    import pwd
    env = {k: v for k, v in env.items() if k not in LOGIN_VARIABLES}
    if login:
        user = pwd.getpwuid(os.getuid()).pw_name
        env.update(USER=user, LOGNAME=user)
    return env


class Scale:
    """N bare hosts, each an entry of its own in the fleet's ssh_config, and the commands timed on them."""

    def __init__(self, fleet: Fleet, workdir: Path, password: str, names: list[str], trees: dict[str, Path]):
        self.fleet, self.names, self.trees = fleet, names, trees
        self.config = str(fleet.ssh_config_path)
        self.inventory = inventory_for(workdir / "scale.yaml", {
            names[0]: {"roles": ["broker", "worker", "beat"], "internal_address": fleet.hosts[names[0]].internal_ip},
            **{name: {"roles": ["worker"]} for name in names[1:]}})
        self.pyinfra_inventory = workdir / "scale_pyinfra.py"
        self.pyinfra_inventory.write_text("hosts = " + repr([(n, {"ssh_config_file": self.config}) for n in names])
                                          + "\n")
        self.env = {**os.environ, "FABCELERY_INVENTORY": str(self.inventory), PASSWORD_ENV: password}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.cpu: dict[tuple, list[float]] = {}     # CPU seconds on this machine's side, per run

    def command(self, tool: str, tree: str = "") -> list[str]:
        n = str(len(self.names))
        if tool == "ssh":
            return ["sh", "-c", 'c=$1; shift; printf "%s\\n" "$@" | xargs -P "$0" -I{} ssh -F "$c" {} true', n,
                    self.config, *self.names]
        if tool == "pyinfra":
            return [str(compare.VENV / "bin" / "pyinfra"), "--yes", "--parallel", n, str(self.pyinfra_inventory),
                    "exec", "--", "true"]
        task = ["status"] if tool == "status" else ["deploy", "--dry-run"]
        return [FAB, "-r", str(self.trees[tree]), "-S", self.config, *task, "--parallel", n]

    def run(self, tool: str, tree: str, login: bool) -> float:
        """One timed run; stops the bench unless every host was reached (and a dry run failed nowhere)."""
        env = scale_env(self.env if tool in ("status", "dry-run") else compare._env(PYINFRA_PROGRESS="off"), login)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds, done = timed(self.command(tool, tree), env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the CPU time of the command and everything it waited for (xargs' ssh processes): here, not the servers'
        self.cpu.setdefault((tool, tree, login), []).append(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        what = f"{tool} ({tree or 'reference'}, {'with' if login else 'without'} USER/LOGNAME)"
        output = done.stdout + done.stderr
        if tool in ("ssh", "pyinfra", "dry-run"):
            check(done, what)
        if tool in ("status", "dry-run"):
            recap = {host: int(failed) for host, failed in SCALE_RECAP.findall(output)}
            # past 20 hosts the recap counts those with nothing changed and nothing failed in one line
            counted = sum(int(n) for n in SCALE_COUNTED.findall(output))
            # a host not reached: its `connect` line (deploy), its UNREACHABLE or ERROR row (status)
            missed = re.search(r"^\S+\s+(connect\s+failed|-\s+(UNREACHABLE|ERROR)\s)", output, re.M)
            if not set(recap) <= set(self.names) or len(recap) + counted != len(self.names) or missed \
                    or "Traceback" in output \
                    or (tool == "dry-run" and any(recap.values())):
                raise BenchError(f"{what}: a host was not reached or failed:\n{output[-3000:]}")
        return seconds


def scale_phase(fleet: Fleet, workdir: Path, password: str, suite: str, count: int, runs: int,
                baseline: Path | None) -> list[str]:
    names = [f"s{i}" for i in range(1, count + 1)]
    print(f"starting {count} bare {suite} hosts ...", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(SCALE_STARTERS) as pool:
        # the project's code on each (a dry run's preflight wants it), nothing else
        list(pool.map(lambda name: start_hosts(fleet, [name], suite), names))
    print(f"{count} hosts up in {time.monotonic() - started:.0f} s", flush=True)
    trees = {"": ROOT, **({"baseline": baseline.resolve()} if baseline else {})}
    scale = Scale(fleet, workdir, password, names, trees)
    plan = [(tool, tree, login) for login in (True, False) for tool in SCALE_TOOLS
            for tree in (trees if tool in ("status", "dry-run") else [""])]
    for key in plan:                                           # warm-up; proves every host is reached
        scale.run(*key)
    scale.cpu.clear()
    times: dict[tuple, list[float]] = {key: [] for key in plan}
    load = os.getloadavg()[0]
    for repetition in range(runs):
        for key in plan:
            times[key].append(scale.run(*key))
        print(f"run {repetition + 1}/{runs}: " + ", ".join(
            f"{t}{'@' + tr if tr else ''}{'' if login else '/no-USER'} {times[(t, tr, login)][-1]:.2f}"
            for t, tr, login in plan), flush=True)
    return scale_report(times, scale.cpu, count, runs, load, baseline)


def scale_report(times: dict, cpu: dict, count: int, runs: int, load: float, baseline: Path | None) -> list[str]:
    label = {"ssh": f"OpenSSH, `ssh HOST true` to all at once (`xargs -P {count}`)",
             "pyinfra": f"pyinfra, `pyinfra --parallel {count} INVENTORY exec -- true`",
             "status": f"`fab status --parallel {count}`", "dry-run": f"`fab deploy --dry-run --parallel {count}`"}
    trees = sorted({tree for _, tree, _ in times}, key=bool)
    lines = [f"## {count} bare hosts at once (--scale {count})", "",
             f"{count} bare test hosts (the example project's code copied on, nothing deployed: `fab status` finds "
             "nothing running and the dry run plans a first deploy; the fan-out is what is measured), each an entry "
             f"of its own in the ssh_config; seconds, median of {runs} timed runs, in turns, after a warm-up of "
             f"each; 1-minute load average {load:.1f} before the timed runs."
             + (f" baseline: the tree in `{baseline}`, run by the same virtualenv's `fab`." if baseline else ""), "",
             "Wall-clock seconds, and the CPU seconds spent on this side (user + system time of the command and "
             "of the processes it waited for, e.g. xargs' ssh processes; not the servers'), which the other work "
             "on the machine disturbs less:", "",
             "| | with USER, LOGNAME | without | CPU, with | CPU, without |", "| --- | ---: | ---: | ---: | ---: |"]
    for tool in SCALE_TOOLS:
        for tree in (trees if tool in ("status", "dry-run") else [""]):
            name = label[tool] + (f" ({'this tree' if not tree else tree})" if len(trees) > 1 and tool in (
                "status", "dry-run") else "")
            lines.append(f"| {name} | " + " | ".join(f"{med(times[(tool, tree, login)]):.2f}"
                                                      for login in (True, False))
                         + " | " + " | ".join(f"{med(cpu[(tool, tree, login)]):.2f}" for login in (True, False)) + " |")
    lines += ["", "Spread (min-max):", ""]
    lines += [f"- {tool}{' ' + tree if tree else ''}, {'with' if login else 'without'} USER/LOGNAME: "
              f"{min(v):.2f}-{max(v):.2f} ({', '.join(f'{x:.2f}' for x in v)})"
              for (tool, tree, login), v in times.items()]
    lines += ["", "Targets (issue #22):", ""]
    for login in (True, False):
        status, pyinfra, ssh = (med(times[(t, "", login)]) for t in ("status", "pyinfra", "ssh"))
        env = "with USER/LOGNAME" if login else "without USER/LOGNAME"
        lines.append(f"- `fab status` at most 0.8x pyinfra `exec -- true`, {env}: {status / pyinfra:.2f}x "
                     f"({verdict(status <= 0.8 * pyinfra)})")
        lines.append(f"- `fab status` at most 1.0x OpenSSH to all at once, {env}: {status / ssh:.2f}x "
                     f"({verdict(status <= ssh)})")
    return lines


# --- 1. no-op runs -------------------------------------------------------------------------

def noop_phase(fleet: Fleet, workdir: Path, password: str, suite: str, runs: int) -> dict:
    print(f"starting {len(HOSTS)} {suite} hosts ...", flush=True)
    started = start_hosts(fleet, HOSTS, suite)
    hosts = {"bench1": {"roles": ["broker", "worker", "beat"], "internal_address": started[0].internal_ip}}
    hosts.update({name: {"roles": ["worker"]} for name in HOSTS[1:]})
    inventory = inventory_for(workdir / "inventory.yaml", hosts)
    bench = Bench(fleet, inventory, password, workdir)
    print("fab deploy to all of them ...", flush=True)
    seconds, done = bench.fab("deploy")
    check(done, "the first fab deploy")
    print(f"deployed {len(HOSTS)} hosts in {seconds:.0f} s; preparing Ansible and pyinfra ...", flush=True)
    compare.prepare(workdir, inventory, fleet.state_dir, HOSTS, password)
    time.sleep(SETTLE)

    tools = ("ssh", "status", "fab", "pyinfra", "ansible")
    plan = [(tool, size) for size in SIZES for tool in tools if tool != "ssh" or size == 1]
    for tool, size in plan:                                   # warm-up; proves each deploy is a no-op
        bench.run(tool, HOSTS[:size])
    times: dict[tuple[str, int], list[float]] = {key: [] for key in plan}
    load = os.getloadavg()[0]
    for repetition in range(runs):
        for tool, size in plan:                               # in turns: drift hits every tool alike
            times[(tool, size)].append(bench.run(tool, HOSTS[:size]))
        print(f"run {repetition + 1}/{runs}: " + ", ".join(
            f"{tool}@{size} {times[(tool, size)][-1]:.2f}" for tool, size in plan), flush=True)
    counts = [count_one(bench, host, task) for task in ("deploy", "status") for host in ("bench2", "bench1")]
    return {"times": times, "counts": counts, "load": load}


# --- 2. first deploys ----------------------------------------------------------------------

def by_hand_script(inventory_path: Path, host: str) -> tuple[str, str]:
    """The apt and the pip work of a first deploy, as one would type it (same packages, same pip arguments)."""
    inventory = load_inventory(inventory_path)
    spec = inventory.hosts[host]
    requirements_file = f"{PROJECT['path']}/{PROJECT['requirements']}"
    facts = Facts(contents={requirements_file: (EXAMPLE / PROJECT["requirements"]).read_text()})
    apt = ("export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >/dev/null && "
           + shlex.join(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                         *required_packages(Target.of(inventory, spec), facts)]) + " >/dev/null")
    venv = PROJECT["virtualenv"]
    pip = (f"python3 -m venv {shlex.quote(venv)} && cd {shlex.quote(PROJECT['path'])} && "
           + shlex.join([f"{venv}/bin/pip", "install", "--quiet", "--disable-pip-version-check",
                         *requirements(Target.of(inventory, spec), facts)]))
    return apt, pip


def first_deploy(fleet: Fleet, workdir: Path, password: str, suite: str, tool: str, name: str, round_: int) -> dict:
    host = start_hosts(fleet, [name], suite)[0]
    inventory = inventory_for(workdir / f"inventory-{name}.yaml", {name: {"roles": ["broker", "worker", "beat"]}})
    bench = Bench(fleet, inventory, password, workdir)
    result: dict = {"tool": tool, "host": name, "round": round_}
    if tool == "by hand":
        apt, pip = by_hand_script(inventory, name)
        for what, script in (("apt", apt), ("pip", pip)):
            ssh = ["ssh", "-F", str(fleet.ssh_config_path), name, "sudo -n sh -c " + shlex.quote(script)]
            seconds, done = timed(ssh, bench.env)
            check(done, f"{what} by hand")
            result[what] = seconds
        result["total"] = result["apt"] + result["pip"]
    elif tool == "fab":
        seconds, done = bench.fab("deploy")
        check(done, "fab's first deploy")
        result["total"] = seconds
        result["steps"] = {step: float(s) for step, s in STEP_LINE.findall(done.stdout)}
        result["output"] = done.stdout
    else:
        compare.prepare(workdir, inventory, fleet.state_dir, [name], password)
        argv, env = compare.ansible_run(workdir, [name]) if tool == "ansible" else compare.pyinfra_run(workdir, [name])
        seconds, done = timed(argv, env)
        check(done, f"{tool}'s first deploy")
        result["total"] = seconds
    if tool != "by hand":                      # the deploy worked: the worker answers
        ping = fleet.exec(host, f"cd {PROJECT['path']} && runuser -u arches -- {PROJECT['virtualenv']}/bin/celery "
                                f"-A demo_proj.celery inspect ping -d celery@{name} --timeout 10", check=False)
        if ping.returncode != 0:
            raise BenchError(f"after {tool}'s first deploy, the worker on {name} does not answer:\n{ping.stdout}")
    fleet.remove(host)
    print(f"first deploy, {tool}: {result['total']:.1f} s", flush=True)
    return result


def first_phase(fleet: Fleet, workdir: Path, password: str, suite: str, rounds: int) -> list[dict]:
    results = []
    order = ["fab", "pyinfra", "ansible", "by hand"]
    for round_ in range(rounds):
        for index, tool in enumerate(order if round_ % 2 == 0 else order[::-1]):
            results.append(first_deploy(fleet, workdir, password, suite, tool, f"first{round_}{index}", round_))
    return results


# --- the report ----------------------------------------------------------------------------

def med(values: list[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(noop: dict, first: list[dict], meta: dict) -> list[str]:
    times = noop["times"]
    ssh = med(times[("ssh", 1)])
    lines = [
        "## No-op runs (seconds, median of the timed runs)",
        "",
        "| hosts | `ssh HOST true` | `fab status` | `fab deploy` | pyinfra deploy | Ansible playbook "
        "| pyinfra / fab | Ansible / fab |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in SIZES:
        fab, pyi, ans = (med(times[(t, size)]) for t in ("fab", "pyinfra", "ansible"))
        lines.append(f"| {size} | {f'{ssh:.3f}' if size == 1 else ''} | {med(times[('status', size)]):.3f} "
                     f"| {fab:.3f} | {pyi:.3f} | {ans:.3f} | {pyi / fab:.1f}x | {ans / fab:.1f}x |")
    lines += ["", "Spread (min-max over the timed runs):", ""]
    for (tool, size), values in times.items():
        lines.append(f"- {tool} on {size}: {min(values):.3f}-{max(values):.3f} s "
                     f"({', '.join(f'{v:.2f}' for v in values)})")
    fab1, status1 = med(times[("fab", 1)]), med(times[("status", 1)])
    counts = {(c["task"], c["host"]): c for c in noop["counts"]}
    deploy_counts = [counts[("deploy", h)] for h in ("bench2", "bench1")]
    targets = [
        ("No-op deploy on 1 host: 1 SSH connection, at most 2 remote commands",
         all(c["connections"] == 1 and c["commands"] <= 2 for c in deploy_counts),
         ", ".join(f"{c['host']}: {c['connections']} connection(s), {c['commands']} command(s)"
                   for c in deploy_counts)),
        ("No-op deploy on 1 host within 3x `ssh HOST true`", fab1 <= 3 * ssh, f"{fab1 / ssh:.2f}x"),
        ("`fab status` on 1 host within 2x `ssh HOST true`", status1 <= 2 * ssh, f"{status1 / ssh:.2f}x"),
    ]
    for tool, label in (("fab", "No-op deploy"), ("status", "`fab status`")):
        for size in SIZES[1:]:
            ratio = med(times[(tool, size)]) / med(times[(tool, 1)])
            targets.append((f"{label} on {size} hosts at most 1.3x 1 host", ratio <= 1.3, f"{ratio:.2f}x"))
    targets.append(("No-op deploy vs Ansible, 1 host (about 20x)", med(times[("ansible", 1)]) / fab1 >= 20,
                    f"{med(times[('ansible', 1)]) / fab1:.1f}x faster"))
    targets.append(("No-op deploy vs pyinfra, 1 host (about 4x)", med(times[("pyinfra", 1)]) / fab1 >= 4,
                    f"{med(times[('pyinfra', 1)]) / fab1:.1f}x faster"))

    if first:
        lines += ["", "## First deploy of a fresh host (seconds; one host at a time)", "",
                  "| round | fab | pyinfra | Ansible | apt + pip by hand (apt, pip) |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for round_ in sorted({r["round"] for r in first}):
            row = {r["tool"]: r for r in first if r["round"] == round_}
            hand = row["by hand"]
            lines.append(f"| {round_ + 1} | {row['fab']['total']:.1f} | {row['pyinfra']['total']:.1f} "
                         f"| {row['ansible']['total']:.1f} "
                         f"| {hand['total']:.1f} ({hand['apt']:.1f}, {hand['pip']:.1f}) |")
        fab_runs = [r for r in first if r["tool"] == "fab"]
        step_names = list(fab_runs[0]["steps"])
        lines += ["", "fab's first deploy, step by step (its own output; system = apt, python = venv + pip):", "",
                  "| round | " + " | ".join(step_names) + " | total (incl. start and connect) |",
                  "| ---: |" + " ---: |" * (len(step_names) + 1)]
        for r in fab_runs:
            lines.append(f"| {r['round'] + 1} | " + " | ".join(f"{r['steps'].get(s, 0):.1f}" for s in step_names)
                         + f" | {r['total']:.1f} |")
        fab_first = med([r["total"] for r in fab_runs])
        pyinfra_first = med([r["total"] for r in first if r["tool"] == "pyinfra"])
        hand_first = med([r["total"] for r in first if r["tool"] == "by hand"])
        work = med([r["steps"].get("system", 0) + r["steps"].get("python", 0) for r in fab_runs])
        targets.append(("First deploy faster than pyinfra's", fab_first < pyinfra_first,
                        f"{fab_first:.1f} s vs {pyinfra_first:.1f} s"))
        targets.append(("First deploy within apt + pip work + 10%", fab_first <= 1.1 * hand_first,
                        f"{fab_first:.1f} s = {fab_first / hand_first:.2f}x the same apt and pip commands by hand "
                        f"({hand_first:.1f} s); its own apt and pip steps took {work:.1f} s, "
                        f"so the rest of the deploy took {fab_first - work:.1f} s"))

    lines += ["", "## SSH connections and remote commands (one run on one host)", "",
              "Counted from the client (paramiko: handshakes, exec requests, SFTP sessions) and from the server "
              "(the journal: sshd's accepted logins, sudo's commands):", "",
              "| task | host | SSH connections | remote commands | SFTP | sshd logins | sudo commands |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {c['task']} | {c['host']} | {c['connections']} | {c['commands']} | {c['sftp']} "
              f"| {c['sshd_logins']} | {c['sudo_commands']} |" for c in noop["counts"]]
    lines += ["", "## Targets (issue #6)", ""]
    lines += [f"- {name}: {detail} ({verdict(ok)})" for name, ok, detail in targets]
    return lines


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return f"{os.cpu_count()} CPUs ({model or 'unknown model'}), {memory:.0f} GiB"


def versions() -> str:
    import fabric
    import invoke
    import paramiko
    tools = compare.ensure_tools()
    return (f"CPython {platform.python_version()} ({sys.executable}), fabric {fabric.__version__}, "
            f"invoke {invoke.__version__}, paramiko {paramiko.__version__}, "
            + ", ".join(f"{name} {version}" for name, version in tools.items()))


SCALE_MARKER = "<!-- bench/bench.py --scale writes below this line; the other runs keep it -->"


def write_report(path: Path, text: str, scale: bool = False) -> None:
    """`text` into `path`: a --scale run's below SCALE_MARKER, the others' above it; the other part is kept."""
    old = path.read_text() if path.exists() else ""
    head, marked, tail = old.partition(SCALE_MARKER)
    if scale:
        path.write_text((head.rstrip("\n") + "\n\n" if head.strip() else "") + SCALE_MARKER + "\n\n" + text)
    else:
        path.write_text(text + ("\n" + SCALE_MARKER + tail if marked else ""))


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_HOST = 8    # a test host's systemd and its path units; Debian's default 128 stops near 30 hosts


def raise_inotify_instances(hosts: int) -> None:
    """Each systemd container takes inotify instances of the one user that runs podman; past the
    limit a fresh host's path units fail and it boots 'degraded'."""
    have, need = int(INOTIFY_INSTANCES.read_text()), INOTIFY_PER_HOST * hosts + 128
    if have >= need:
        return
    try:
        INOTIFY_INSTANCES.write_text(f"{need}\n")
    except OSError as exc:
        raise BenchError(f"{hosts} hosts need fs.inotify.max_user_instances of at least {need} (it is {have}), "
                         f"and it could not be raised ({exc.strerror}): run `sysctl -w "
                         f"fs.inotify.max_user_instances={need}` as root, then the bench again") from None
    print(f"raised fs.inotify.max_user_instances from {have} to {need} for {hosts} hosts", flush=True)


def scale_main(args: argparse.Namespace) -> int:
    """--scale N: the bare hosts' run alone; the section is printed (and written with --write)."""
    raise_inotify_instances(args.scale)
    print("installing pyinfra into bench/.venv-compare (once) ...", flush=True)
    meta = {"versions": versions(), "machine": machine()}
    running = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout.split()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fabcelery-scale-")))
        if args.keep:      # the hosts stay for the next run (python -m testhost down --state-dir DIR)
            fleet = demo_fleet(args.keep)
            stack.callback(save_state, fleet)
        else:
            fleet = stack.enter_context(Fleet(workdir / "fleet"))
        lines = scale_phase(fleet, workdir, secrets.token_urlsafe(24), args.suite, args.scale, args.runs,
                            args.baseline)
    command = ".venv/bin/python " + shlex.join(["bench/bench.py", *sys.argv[1:]])
    text = "\n".join([*lines[:1], "", f"Made with `{command}` on {datetime.date.today().isoformat()}: "
                      f"{meta['machine']}; {meta['versions']}; Debian {args.suite} test hosts; {len(running)} other "
                      "container(s) running at the start.", *lines[1:]]) + "\n"
    print("\n" + text)
    if args.write:
        write_report(args.write, text, scale=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each tool and size (default 5)")
    parser.add_argument("--first-rounds", type=int, default=1, help="rounds of first deploys (default 1; 0: none)")
    parser.add_argument("--suite", default="trixie", choices=("bookworm", "trixie"), help="Debian of the hosts")
    parser.add_argument("--sizes", default="1,4,8", help="fleet sizes, comma-separated, from 1 (default 1,4,8)")
    parser.add_argument("--write", type=Path, help="also write the report as Markdown to this file")
    parser.add_argument("--cluster", action="store_true",
                        help="only a three-node RabbitMQ cluster with two worker hosts: first and no-op deploys")
    parser.add_argument("--scale", type=int, metavar="N",
                        help="only this instead: N bare hosts, `fab status` and `fab deploy --dry-run` to all at once "
                             "beside OpenSSH and pyinfra, with and without USER/LOGNAME (prints a section for "
                             "bench/RESULTS.md; --write writes it alone)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="with --scale: also time the fab of another checkout (e.g. `git archive` of an older "
                             "commit unpacked in DIR), on the same hosts, in turns")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the no-op hosts (state in DIR) and reuse them next time; remove them with "
                             "python -m testhost down --state-dir DIR")
    parser.add_argument("--rtt", type=float, metavar="MS",
                        help="only this instead: one host through a local delay proxy adding MS of round trip "
                             "(bench/rtt.py): ssh HOST true, fab status and a no-op deploy, --runs times each")
    args = parser.parse_args()
    if args.rtt:
        return subprocess.run([sys.executable, str(Path(__file__).with_name("rtt.py")), "--rtt", str(args.rtt),
                               "--runs", str(args.runs)]).returncode
    global SIZES, HOSTS
    SIZES = tuple(int(n) for n in args.sizes.split(","))
    if SIZES[0] != 1 or sorted(SIZES) != list(SIZES) or len(SIZES) < 2:
        parser.error("--sizes must start with 1 and grow, with at least two sizes, e.g. 1,4,8")
    HOSTS = [f"bench{i}" for i in range(1, max(SIZES) + 1)]

    if args.baseline and not args.scale:
        parser.error("--baseline goes with --scale")
    if args.baseline and not (args.baseline / "fabfile.py").is_file():
        parser.error(f"--baseline {args.baseline}: no fabfile.py there")
    ensure_images([args.suite])
    cleanup_stale()
    if args.scale:
        return scale_main(args)
    if args.cluster:     # fab alone: no Ansible or pyinfra needed
        meta = {"machine": machine()}
    else:
        print("installing Ansible and pyinfra into bench/.venv-compare (once) ...", flush=True)
        meta = {"versions": versions(), "machine": machine()}
    running = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout.split()
    password = secrets.token_urlsafe(24)   # the fleet's broker password: never printed
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fabcelery-bench-")))
        if args.keep:
            fleet = demo_fleet(args.keep)
            stack.callback(save_state, fleet)   # `python -m testhost down --state-dir DIR` finds them
        else:
            fleet = stack.enter_context(Fleet(workdir / "fleet"))
        others = [name for name in running if name not in {fleet.container_name(h) for h in HOSTS}]
        if args.cluster:
            lines = cluster_phase(fleet, workdir, password, args.suite, args.runs)
            command = ".venv/bin/python " + shlex.join(["bench/bench.py", *sys.argv[1:]])
            text = "\n".join([f"Made with `{command}` on {datetime.date.today().isoformat()}: {meta['machine']}; "
                              f"{len(others)} other container(s) running at the start.", "", *lines]) + "\n"
            print("\n" + text)
            if args.write:
                args.write.write_text(text)
            return 0
        noop = noop_phase(fleet, workdir, password, args.suite, args.runs)
        first: list[dict] = []
        if args.first_rounds:
            if not args.keep:
                for name in HOSTS:
                    fleet.remove(name)
            first_fleet = stack.enter_context(Fleet(workdir / "first")) if args.keep else fleet
            first = first_phase(first_fleet, workdir, password, args.suite, args.first_rounds)

    command = ".venv/bin/python " + shlex.join(["bench/bench.py", *sys.argv[1:]])
    text = "\n".join([
        "# bench: fabcelery beside Ansible and pyinfra",
        "",
        f"Made with `{command}` (`make bench`) on {datetime.date.today().isoformat()}: {meta['machine']}; "
        f"{meta['versions']}; test hosts: Debian {args.suite} containers on this machine (podman, systemd, sshd), "
        f"{len(others)} other container(s) running at the start, 1-minute load average {noop['load']:.1f} before the "
        f"timed runs. Each timed run is a new process, real SSH to every host; {args.runs} timed runs of each "
        "tool and size, in turns, after one warm-up run each that also proves the deploy changes nothing. "
        "Ansible runs with pipelining and ControlPersist, its control connections closed before each run (cold, "
        "as fab and pyinfra start); bench/compare/README.md has the playbook's and the pyinfra deploy's settings.",
        "",
        *report(noop, first, meta),
    ]) + "\n"
    print("\n" + text)
    if args.write:
        write_report(args.write, text)
        print(f"written to {args.write}")
    print("timings (s): " + json.dumps({f"{t}@{s}": [round(x, 3) for x in v] for (t, s), v in noop["times"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
