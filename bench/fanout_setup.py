"""What setting up N connections costs before any packet is sent (no server needed).

    .venv/bin/python bench/fanout_setup.py [--hosts 100] [--tree DIR]

Writes, in a temporary directory, an ssh_config with one block per host (as testhost's
and many fleets' are: HostName, Port, User, IdentityFile, UserKnownHostsFile) and a
known_hosts file with three keys per host; then times, in this process, what a run of
`fab` does for each host before connecting: `Remote(host, config)` (Fabric's Connection,
its ssh_config lookup) and the host-key setup (known_hosts read into the connection).
`--tree DIR`: import tasks/ from another checkout (e.g. an older commit's `git archive`).
Run it with and without USER/LOGNAME in the environment (`env -u USER -u LOGNAME ...`):
paramiko asks the passwd file for the local user when they are missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from fabric import Config

    from tasks.inventory import HostSpec
    from tasks.remote import Remote

    with tempfile.TemporaryDirectory(prefix="fabcelery-fanout-") as tmp:
        work = Path(tmp)
        keys = []
        for kind in ("ed25519", "ecdsa", "rsa"):
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(work / kind)], check=True)
            keytype, data = (work / f"{kind}.pub").read_text().split()[:2]
            keys.append(f"{keytype} {data}")
        known = work / "known_hosts"
        known.write_text("".join(f"[127.0.0.1]:{30000 + i} {key}\n" for i in range(1, args.hosts + 1) for key in keys))
        ssh_config = work / "ssh_config"
        ssh_config.write_text("\n".join(
            f"Host h{i}\n    HostName 127.0.0.1\n    Port {30000 + i}\n    User deploy\n"
            f"    IdentityFile {work}/ed25519\n    IdentitiesOnly yes\n    UserKnownHostsFile {known}\n"
            "    StrictHostKeyChecking yes\n" for i in range(1, args.hosts + 1)))
        config = Config(runtime_ssh_path=str(ssh_config))
        started = time.perf_counter()
        remotes = [Remote(HostSpec(f"h{i}"), config) for i in range(1, args.hosts + 1)]
        made = time.perf_counter()
        for remote in remotes:
            remote._check_host_keys(remote.conn)
        checked = time.perf_counter()
    login = "with" if os.environ.get("USER") or os.environ.get("LOGNAME") else "without"
    print(f"{args.tree}: {args.hosts} hosts, {login} USER/LOGNAME: Remote() {made - started:.3f} s, "
          f"known_hosts {checked - made:.3f} s, together {checked - started:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
