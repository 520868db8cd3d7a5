"""Run each fabcelery task once for all its hosts, instead of once per host.

Fabric's executor turns `fab -H a,b,c task` into three calls made one after another
(fabric#2156). Ours makes one call and hands the host names to the task, which runs
them concurrently (tasks.report.run_hosts). fabric.yaml beside the fabfile selects it
through Invoke's documented `tasks.executor_class` setting.
"""

from __future__ import annotations

import os
import sys

from fabric import Executor as FabricExecutor
from invoke import Executor as InvokeExecutor
from invoke import Exit


class FleetExecutor(FabricExecutor):
    def expand_calls(self, calls, apply_hosts=True):
        host_str = self.core[0].args.hosts.value
        self.config["fabcelery_hosts"] = [h.strip() for h in host_str.split(",") if h.strip()] if host_str else []
        return InvokeExecutor.expand_calls(self, calls)

    def execute(self, *tasks):
        try:
            return super().execute(*tasks)
        except BrokenPipeError:
            # The reader went away (`fab status --json | head`): stop quietly, as `cat` does,
            # rather than with a traceback; and keep Python from a second error at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=1) from None
