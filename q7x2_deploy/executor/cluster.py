"""The plan plus one open transport per host: what every executor operation works on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from q7x2_deploy.backends.container_runtime import ContainerRuntime, RuntimeFactory
from q7x2_deploy.backends.docker_cli import DockerCLI
from q7x2_deploy.plan import HostPlan, Plan
from q7x2_deploy.transport import Transport
from q7x2_deploy.transport.factory import TransportFactory

@dataclass
class Cluster:
    plan: Plan
    transports: dict[str, Transport] = field(default_factory=dict)
    # Every container the executor starts, waits for or stops goes through this.
    runtime_factory: RuntimeFactory = DockerCLI

    @property
    def hosts(self) -> list[HostPlan]:
        return self.plan.hosts

    def transport(self, host: HostPlan | str) -> Transport:
        return self.transports[host if isinstance(host, str) else host.name]

    def runtime(self, host: HostPlan | str) -> ContainerRuntime:
        """The host's container engine (cheap: a view over its transport)."""
        return self.runtime_factory(self.transport(host))

    def host(self, name: str) -> HostPlan:
        return next(h for h in self.plan.hosts if h.name == name)

    @property
    def master(self) -> HostPlan:
        # A plan cut down to some hosts (`logs --host`) may lack it: the first host stands in.
        return next((h for h in self.plan.hosts if h.is_master), self.plan.hosts[0])

    def close(self) -> None:
        for t in self.transports.values():
            t.close()


@contextmanager
def open_cluster(plan: Plan, factory: TransportFactory) -> Iterator[Cluster]:
    """Transports connect lazily, so this is cheap; closing them all is the point."""
    cluster = Cluster(plan, {h.name: factory(h) for h in plan.hosts})
    try:
        yield cluster
    finally:
        cluster.close()
