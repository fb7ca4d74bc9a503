"""The plan plus one open transport per host: what every executor operation works on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from q7x2_deploy.plan import HostPlan, Plan
from q7x2_deploy.transport import SSHConfig, SSHTransport, Transport

TransportFactory = Callable[[HostPlan], Transport]


def ssh_factory(accept_new_host_keys: bool = False) -> TransportFactory:
    def _make(host: HostPlan) -> Transport:
        s = host.ssh
        return SSHTransport(
            SSHConfig(
                host=host.name,
                address=host.address,
                port=int(str(s.get("port", 22))),
                user=str(s.get("user", "root")),
                identity=str(s["identity"]) if s.get("identity") else None,
                known_hosts=str(s.get("known_hosts", "~/.ssh/known_hosts")),
                accept_new_host_keys=accept_new_host_keys,
            )
        )

    return _make


@dataclass
class Cluster:
    plan: Plan
    transports: dict[str, Transport] = field(default_factory=dict)

    @property
    def hosts(self) -> list[HostPlan]:
        return self.plan.hosts

    def transport(self, host: HostPlan | str) -> Transport:
        return self.transports[host if isinstance(host, str) else host.name]

    def host(self, name: str) -> HostPlan:
        return next(h for h in self.plan.hosts if h.name == name)

    @property
    def master(self) -> HostPlan:
        return next((h for h in self.plan.hosts if h.address == self.plan.master_addr), self.plan.hosts[0])

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
