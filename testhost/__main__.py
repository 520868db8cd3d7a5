"""Test hosts that outlive the command, for ``make demo`` and for poking around.

    python -m testhost up NAME [--suite trixie] --state-dir DIR
    python -m testhost exec NAME --state-dir DIR -- CMD...   (as root, via podman exec)
    python -m testhost down --state-dir DIR

The containers belong to the state directory: their run id is derived from its path,
so a second ``up`` reuses (and if need be starts) the container that the first one
made, and ``down`` removes every host of that directory. ``DIR/testhost.json`` records
the hosts; ``ssh -F DIR/ssh_config NAME`` reaches one as ``deploy``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from testhost.harness import SUITES, Fleet, HarnessError, TestHost, ensure_images, images_ready

STATE_FILE = "testhost.json"


def demo_fleet(state_dir: Path) -> Fleet:
    """The persistent fleet that belongs to ``state_dir``, with the hosts it records."""
    state_dir = state_dir.resolve()
    run_id = "demo-" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    fleet = Fleet(state_dir, run_id, persistent=True)
    state_file = state_dir / STATE_FILE
    if state_file.exists():
        recorded = json.loads(state_file.read_text())
        for name, fields in recorded.get("hosts", {}).items():
            fleet.hosts[name] = TestHost(**fields)
    return fleet


def save_state(fleet: Fleet) -> None:
    state = {
        "run_id": fleet.run_id,
        "ssh_config": str(fleet.ssh_config_path),
        "hosts": {name: asdict(host) for name, host in sorted(fleet.hosts.items())},
    }
    (fleet.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def up(args: argparse.Namespace) -> int:
    fleet = demo_fleet(args.state_dir)
    host = fleet.adopt(args.name)
    if host is not None and args.suite not in (None, host.suite):
        print(
            f"{args.name} already runs {host.suite}; `down` first to get {args.suite}",
            file=sys.stderr,
        )
        return 1
    if host is None:
        fleet.hosts.pop(args.name, None)  # recorded, but its container is gone
        suite = args.suite or "trixie"
        if not images_ready([suite]):
            ensure_images([suite])
        host = fleet.start(args.name, suite)
    save_state(fleet)
    print(
        f"{host.name}: {host.suite} on 127.0.0.1:{host.port}"
        f" (internal {host.internal_ip});"
        f" ssh -F {shlex.quote(str(fleet.ssh_config_path))} {host.name}"
    )
    return 0


def exec_command(args: argparse.Namespace) -> int:
    fleet = demo_fleet(args.state_dir)
    if args.name not in fleet.hosts:
        print(f"no host {args.name!r} in {args.state_dir}; run `up` first", file=sys.stderr)
        return 1
    result = fleet.exec(args.name, shlex.join(args.command), check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


def down(args: argparse.Namespace) -> int:
    fleet = demo_fleet(args.state_dir)
    removed = fleet.remove_all()
    (fleet.state_dir / STATE_FILE).unlink(missing_ok=True)
    print("removed " + (", ".join(removed) if removed else "nothing"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testhost", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)

    up_parser = commands.add_parser("up", help="start a host, or reuse the running one")
    up_parser.add_argument("name", help="SSH alias and hostname, e.g. deb12")
    up_parser.add_argument("--suite", choices=SUITES, help="for a new host; default trixie")
    up_parser.set_defaults(run=up)

    exec_parser = commands.add_parser("exec", help="run a command as root (podman exec)")
    exec_parser.add_argument("name")
    exec_parser.set_defaults(run=exec_command)

    down_parser = commands.add_parser("down", help="remove every host of the state dir")
    down_parser.set_defaults(run=down)

    for sub in (up_parser, exec_parser, down_parser):
        sub.add_argument("--state-dir", type=Path, required=True, help="e.g. .demo")

    # Everything after "--" is the command for `exec`, whatever options it holds.
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    args.command = command
    if args.action == "exec" and not command:
        parser.error("exec needs a command after --")
    try:
        return args.run(args)
    except HarnessError as error:
        print(f"testhost: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
