"""Names, addresses and paths of one sandbox, all derived from its name and subnet.

Every resource the sandbox creates carries the sandbox name, so `down` can find it again even
when the state file is lost, and two sandboxes with different names never touch each other.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from q7x2_runtime.errors import UserError

DEFAULT_ROOT = Path(os.environ.get("Q7X2_SANDBOX_ROOT", "/var/lib/q7x2-sandbox"))
DEFAULT_NAME = "q7x2"
# A private range the machine does not use; only our own namespaces ever hold addresses in it.
DEFAULT_SUBNET = "10.213.7.0/24"
REGISTRY_PORT = 5000
FIRST_HOST_OCTET = 11
MAX_HOSTS = 64
BASTION_NAME = "sbx-bastion"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # short: interface names are at most 15 chars


def cache_dir(root: Path = DEFAULT_ROOT) -> Path:
    """Shared by every sandbox name and kept across `down`: the base image rootfs lives here."""
    return root / "cache"


@dataclass(frozen=True)
class HostNames:
    index: int  # 1-based
    name: str
    netns: str
    veth_root: str  # the bridge side of the host's cable
    veth_peer_tmp: str  # the host side before it moves into the namespace
    nic: str  # the host side inside the namespace
    address: str
    cgroup_parent: str
    dir: Path


@dataclass(frozen=True)
class SandboxConfig:
    name: str = DEFAULT_NAME
    subnet: str = DEFAULT_SUBNET
    root: Path = field(default=DEFAULT_ROOT)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise UserError(f"sandbox name {self.name!r} must be 1-8 lowercase letters/digits, starting with a letter")
        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as e:
            raise UserError(f"bad subnet {self.subnet!r}: {e}") from None
        if not isinstance(net, ipaddress.IPv4Network) or not net.is_private or net.prefixlen > 24:
            raise UserError(f"subnet {self.subnet!r} must be a private IPv4 network of /24 or larger")

    # --- paths -------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def cache_dir(self) -> Path:
        return cache_dir(self.root)

    @property
    def shared_dir(self) -> Path:
        return self.state_dir / "shared"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def identity(self) -> Path:
        return self.keys_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.keys_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        """The OpenSSH client config `up --bastion` writes: every host through the bastion."""
        return self.keys_dir / "ssh_config"

    @property
    def registry_dir(self) -> Path:
        return self.state_dir / "registry"

    # --- network -----------------------------------------------------------------------
    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    @property
    def bridge_address(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def registry_address(self) -> str:
        """host:port that every engine (root and sandbox hosts) uses in image names."""
        return f"{self.bridge_address}:{REGISTRY_PORT}"

    @property
    def iptables_comment(self) -> str:
        return f"q7x2-sandbox:{self.name}"

    def host(self, index: int) -> HostNames:
        if not 1 <= index <= MAX_HOSTS:
            raise UserError(f"host index {index} out of range 1..{MAX_HOSTS}")
        name = f"sbx-{index}"
        return HostNames(
            index=index,
            name=name,
            netns=f"{self.name}-{name}",
            veth_root=f"{self.name}-v{index}",
            veth_peer_tmp=f"{self.name}-p{index}",
            nic="eth0",
            address=str(self.network.network_address + FIRST_HOST_OCTET - 1 + index),
            cgroup_parent=f"/{self.name}-{name}",
            dir=self.state_dir / "hosts" / name,
        )

    def bastion(self) -> HostNames:
        """The jump host of `up --bastion`: the only one the machine can open connections to.
        Index 0: its namespace and cable carry the names `down` already sweeps."""
        return HostNames(
            index=0,
            name=BASTION_NAME,
            netns=f"{self.name}-sbx-0",
            veth_root=f"{self.name}-v0",
            veth_peer_tmp=f"{self.name}-p0",
            nic="eth0",
            address=str(self.network.network_address + FIRST_HOST_OCTET - 1),
            cgroup_parent=f"/{self.name}-sbx-0",
            dir=self.state_dir / "hosts" / BASTION_NAME,
        )

    def host_by_name(self, name: str, count: int) -> HostNames:
        for i in range(1, count + 1):
            h = self.host(i)
            if h.name == name or h.address == name:
                return h
        names = ", ".join(self.host(i).name for i in range(1, count + 1)) or "none"
        raise UserError(f"no sandbox host {name!r} (hosts: {names})")
