"""One host of one run, as every deploy step and day-two task reads it: the inventory, the
host, where the project's files live there (its Layout), the supervisor programs it runs (its
program table) and the broker's strategy (Redis or RabbitMQ, tasks/broker_kind.py). Built once per
host and run (Target.of), so no step works them out again from (inventory, host)."""

from __future__ import annotations

from dataclasses import dataclass

from .broker_host import manages_broker
from .broker_kind import BrokerKind, broker_of
from .inventory import HostSpec, Inventory
from .layout import Layout
from .programs import Program, programs_of
from .rabbitmq_cluster import in_cluster


@dataclass(frozen=True, eq=False)
class Target:
    inventory: Inventory
    host: HostSpec
    layout: Layout
    programs: tuple[Program, ...]     # a worker per pool placed here, then beat if it runs here
    broker: BrokerKind                # the strategy of broker.kind
    manages_broker: bool              # fabcelery sets up a broker here (a broker host, no broker.url)
    in_cluster: bool                  # a node of a RabbitMQ cluster

    @classmethod
    def of(cls, inventory: Inventory, host: HostSpec) -> Target:
        layout = Layout(inventory.project)
        return cls(inventory, host, layout, tuple(programs_of(inventory, layout, host)), broker_of(inventory),
                   manages_broker(inventory, host), in_cluster(inventory, host))

    def pool_programs(self, pool: str | None) -> list[Program]:
        """The programs an operation with --pool acts on: that pool's worker (none if the pool
        does not run here); every program without one."""
        if pool is None:
            return list(self.programs)
        return [p for p in self.programs if p.is_worker and p.name == pool]

    @property
    def workers(self) -> list[Program]:
        return [p for p in self.programs if p.is_worker]
