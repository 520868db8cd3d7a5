"""`make demo`: a local test server, the example project deployed to it, a task, `fab status`.

Run from the repository root with the project's virtualenv (the Makefile does).
The server stays up for you to look at: `.venv/bin/fab -S .demo/ssh_config status`,
`ssh -F .demo/ssh_config demo`; `make demo-down` removes it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testhost.__main__ import demo_fleet, save_state  # noqa: E402

STATE = ROOT / ".demo"
FAB = [str(Path(sys.executable).parent / "fab"), "-r", str(ROOT), "-S", str(STATE / "ssh_config")]


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def closing_words(cwd: Path) -> str:
    """What to paste next: the demo's inventory, and fab with the ssh_config that names the server."""
    def shown(path: Path) -> str:
        return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)

    fab = f"{shown(Path(sys.executable).parent / 'fab')} -S {shown(STATE / 'ssh_config')}"
    return "\n".join([
        "",
        f"The demo server stays up. Its inventory is {shown(ROOT / 'inventory.yaml')} (host demo); the name demo",
        f"resolves only through {shown(STATE / 'ssh_config')}, hence -S. Paste:",
        "",
        f"  {fab} status",
        f"  {fab} logs",
        f"  {fab} restart-celery",
        f"  ssh -F {shown(STATE / 'ssh_config')} demo",
        "  make demo-down        # removes the demo server",
    ])


def main() -> int:
    step("starting the demo server (Debian 13, systemd, sshd on 127.0.0.1)")
    fleet = demo_fleet(STATE)
    host = fleet.adopt("demo") or fleet.start("demo", suite="trixie")
    save_state(fleet)
    print(f"demo: ssh -F {STATE / 'ssh_config'} demo  (127.0.0.1:{host.port})")

    if fleet.exec(host, "test -d /opt/arches/demo_proj", check=False).returncode != 0:
        step("putting the example project's code on it (/opt/arches/demo_proj)")
        fleet.put_tree(host, ROOT / "examples" / "demo_proj", "/opt/arches/demo_proj")

    step("fab -H demo deploy")
    if subprocess.run([*FAB, "-H", "demo", "deploy"]).returncode != 0:
        return 1

    step("sending a task with the project's own Celery app: add(2, 3)")
    sent = fleet.exec(host, "cd /opt/arches/demo_proj && runuser -u arches -- "
                            "/opt/arches/venv/bin/python -m demo_proj.sendtask add 2 3", check=False)
    print(f"result: {sent.stdout.strip() or sent.stderr.strip()}")
    failed = sent.returncode != 0
    for queue in ("celery", "exports"):
        step(f"a task sent to the queue {queue} runs in the pool that consumes it: where()")
        where = fleet.exec(host, "cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python "
                                 f"-m demo_proj.sendtask --queue {queue} where", check=False)
        print(f"result: {where.stdout.strip() or where.stderr.strip()}")
        failed = failed or where.returncode != 0

    step("fab status")
    status = subprocess.run([*FAB, "status"]).returncode
    print(closing_words(Path.cwd()))
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())
