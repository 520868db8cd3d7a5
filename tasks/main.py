"""The `fabcelery` command: Fabric's own `fab` program over fabcelery's tasks.

The same core flags as `fab` (-H, -S, -i, --list, --prompt-for-sudo-password, ...), the
tasks built in (no fabfile.py) and run concurrently across hosts (tasks/executor.py),
in any directory. The inventory: `--inventory FILE`, else the file FABCELERY_INVENTORY
names, else ./inventory.yaml. (-i stays Fabric's --identity, the SSH key.)
"""

from __future__ import annotations

from pathlib import Path

from fabric import Config
from fabric import __version__ as fabric_version
from fabric.main import Fab
from invoke import Argument
from invoke import __version__ as invoke_version
from paramiko import __version__ as paramiko_version

from . import __version__
from .cli import INVENTORY_SETTING, ns
from .executor import FleetExecutor


class Fabcelery(Fab):
    def core_args(self):
        return [*super().core_args(),
                Argument(names=("inventory",),
                         help="the inventory file (default: FABCELERY_INVENTORY, else ./inventory.yaml)")]

    def print_version(self):
        print(f"fabcelery {__version__}\nFabric {fabric_version}\nParamiko {paramiko_version}\nInvoke {invoke_version}")

    def update_config(self):
        super().update_config()
        named = self.args.inventory.value
        if named:
            self.config[INVENTORY_SETTING] = str(Path(named).expanduser().absolute())


program = Fabcelery(name="fabcelery", version=__version__, namespace=ns, executor_class=FleetExecutor,
                    config_class=Config, binary="fabcelery")


def main() -> None:
    program.run()
