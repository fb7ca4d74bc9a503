"""Transports for a plan's hosts: SSH logins built the way the operator's OpenSSH client would
log in (ssh_config, jump hosts, host keys)."""

from __future__ import annotations

from collections.abc import Callable

from q7x2_deploy.plan import HostPlan
from q7x2_deploy.ssh_route import ClientConfig, Endpoint, Route, load_client_config, resolve
from q7x2_deploy.transport.base import Transport
from q7x2_deploy.transport.ssh import JumpPool, SSHConfig, SSHTransport

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
