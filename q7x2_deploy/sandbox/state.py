"""The sandbox's state file: what is up, written before each resource is made.

Writing intent first means `down` after a crash still knows what to remove.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class HostState:
    index: int
    init_pid: int | None = None  # the host's PID 1, as seen from the root namespace
    launcher_pid: int | None = None  # the unshare process that holds it
    stopped: bool = False
    cut: bool = False


@dataclass
class State:
    name: str
    subnet: str
    hosts: list[HostState] = field(default_factory=list)
    ascend_devices: int = 0
    registry_pid: int | None = None
    bridge: bool = False
    iptables_rules: list[list[str]] = field(default_factory=list)
    certs_files: list[str] = field(default_factory=list)  # files we wrote outside the state dir
    created_dirs: list[str] = field(default_factory=list)  # dirs we made outside the state dir
    inventory: str | None = None  # the latest inventory written
    inventories: list[str] = field(default_factory=list)  # every inventory written
    base_image: str | None = None
    slurm: bool = False  # munged + slurmd on every host, slurmctld on the first
    # `up --bastion`: the jump host; the other hosts refuse connections from the machine.
    bastion: HostState | None = None

    @classmethod
    def load(cls, path: Path) -> "State | None":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        hosts = [HostState(**h) for h in raw.pop("hosts", [])]
        bastion = raw.pop("bastion", None)
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(hosts=hosts, bastion=HostState(**bastion) if bastion else None, **known)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def host(self, index: int) -> HostState:
        for h in self.hosts:
            if h.index == index:
                return h
        h = HostState(index=index)
        self.hosts.append(h)
        self.hosts.sort(key=lambda x: x.index)
        return h
