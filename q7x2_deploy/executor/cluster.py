"""The plan plus one open transport per host: what every executor operation works on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from q7x2_deploy.backends.container_runtime import ContainerRuntime, RuntimeFactory
from q7x2_deploy.backends.docker_cli import DockerCLI
from q7x2_deploy.plan import HostPlan, Plan
from q7x2_deploy.ssh_route import ClientConfig, Endpoint, Route, load_client_config, resolve
from q7x2_deploy.transport import SSHConfig, SSHTransport, Transport
from q7x2_deploy.transport.ssh import JumpPool

TransportFactory = Callable[[HostPlan], Transport]


def ssh_factory(accept_new_host_keys: bool = False, ssh_config: str | None = None) -> TransportFactory:
    """SSH transports that log in the way the operator's OpenSSH client would: the inventory's
    settings over the ssh config file (`ssh_config`, else the inventory's `ssh.config`, else
    ~/.ssh/config), jump hosts included. Bad config: one SshConfigError line, before any login."""
    pool = JumpPool()
    configs: dict[str | None, ClientConfig] = {}

    def _make(host: HostPlan) -> Transport:
        path = ssh_config or (str(host.ssh["config"]) if host.ssh.get("config") else None)
        if path not in configs:
            configs[path] = load_client_config(path)
        route = resolve(host.address, host.ssh, configs[path])
        return SSHTransport(transport_config(host.name, route, accept_new_host_keys), jump_pool=pool)

    return _make


def transport_config(name: str, route: Route, accept_new_host_keys: bool) -> SSHConfig:
    def config(label: str, e: Endpoint, jumps: tuple[SSHConfig, ...] = ()) -> SSHConfig:
        return SSHConfig(host=label, address=e.hostname, port=e.port, user=e.user,
                         identity=e.identities or None, known_hosts=e.known_hosts,
                         accept_new_host_keys=accept_new_host_keys, connect_timeout=e.connect_timeout,
                         keepalive_interval=e.keepalive_interval, jumps=jumps)

    jumps = tuple(config(f"jump host {j.name}", j) for j in route.jumps)
    return config(name, route.target, jumps)


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
