"""The inventory: hosts, SSH defaults, master, image, container settings and the job.

Parsing (pydantic) checks each value on its own; validation.py checks how values fit
together. `load_inventory` runs both and raises one InventoryError listing every violation.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, ValidationError, field_validator

from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import EnvMap, Job, StrictModel
from q7x2_runtime.safe_text import check_safe_path

# Host names become container names, labels and file names: keep them plain.
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
# Linux interface names: at most 15 characters, no slashes or spaces.
NicName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,15}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")
_IMAGE_REPO = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]{1,5})?(/[a-z0-9]+([._-]{1,2}[a-z0-9]+)*)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SHM_SIZE = re.compile(r"^[0-9]+[bkmgBKMG]?$")

# The devices every Ascend container needs besides the NPUs themselves.
ASCEND_MANAGEMENT_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
# The host's driver files an Ascend training container uses (driver, firmware, npu tools, the
# slog configuration), mounted read-only.
ASCEND_DRIVER_MOUNTS = (
    "/usr/local/Ascend/driver",
    "/usr/local/Ascend/firmware",
    "/usr/local/Ascend/add-ons",
    "/usr/local/sbin",
    "/usr/bin/hccn_tool",
    "/var/log/npu/conf/slog/slog.conf",
)


def _check_address(v: str) -> str:
    try:
        ipaddress.ip_address(v)
        return v
    except ValueError:
        pass
    if not _DNS_NAME.match(v):
        raise ValueError(f"{v!r} is neither an IP address nor a DNS name")
    return v


def is_loopback(address: str) -> bool:
    if address.lower().rstrip(".") in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


Devices = Annotated[int, Field(ge=0, le=64)] | list[Annotated[int, Field(ge=0, le=63)]]


def npu_indices(devices: int | list[int]) -> list[int]:
    """Card indices from either a count (0..N-1) or an explicit list."""
    return list(range(devices)) if isinstance(devices, int) else list(devices)


def npu_ranges(npus: list[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3, 8' (for messages)."""
    runs: list[list[int]] = []
    for n in npus:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


class SshSettings(StrictModel):
    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] | None = None
    port: Port | None = None
    identity: str | None = None
    known_hosts: str | None = None

    @field_validator("identity", "known_hosts")
    @classmethod
    def _path_safe(cls, v: str | None) -> str | None:
        if v is not None:
            check_safe_path(v)
        return v


class SshTarget(StrictModel):
    """The resolved SSH settings of one host (defaults merged with its overrides)."""

    user: str = "root"
    port: int = 22
    identity: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"


class HostSpec(StrictModel):
    name: HostName
    address: str
    node_rank: Annotated[int, Field(ge=0)] | None = None
    ssh: SshSettings | None = None
    nic: NicName | None = None
    devices: Devices | None = None
    env: EnvMap = {}

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _check_address(v)


class MasterSpec(StrictModel):
    host: HostName | None = None
    port: Port = 6000


class ImageSpec(StrictModel):
    repository: str = "q7x2/qwen25-mindspeed"
    tag: str = "2.0.0"
    flavor: Literal["ascend", "cpu"] = "ascend"
    distribution: Literal["registry", "ssh"] = "registry"

    @field_validator("repository")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not _IMAGE_REPO.match(v):
            raise ValueError(f"{v!r} is not a Docker repository name (lowercase, e.g. registry:5000/team/image)")
        return v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not _IMAGE_TAG.match(v):
            raise ValueError(f"{v!r} is not a Docker tag ([A-Za-z0-9_.-], at most 128 characters)")
        return v

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


class ContainerSpec(StrictModel):
    name_prefix: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$")] = "q7x2"
    devices: Devices | None = None  # default: the job's npus_per_node NPUs (0..N-1) on ascend, none on cpu
    driver_mounts: list[str] | None = None  # default: ASCEND_DRIVER_MOUNTS on ascend
    volumes: list[str] = ["/apps", "/home"]
    network_host: bool = True
    ipc_host: bool = True
    shm_size: str = "64g"
    privileged: bool = False
    # Host directory holding each job's spec (mounted read-only into its containers).
    state_dir: str = "/var/lib/q7x2"

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, v: str) -> str:
        check_safe_path(v)
        if not v.startswith("/"):
            raise ValueError(f"{v!r} must be an absolute path")
        return v

    @field_validator("driver_mounts", "volumes")
    @classmethod
    def _paths(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            check_safe_path(p)
            if not p.startswith("/"):
                raise ValueError(f"{p!r} must be an absolute path")
        return v

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, v: str) -> str:
        if not _SHM_SIZE.match(v):
            raise ValueError(f"{v!r} is not a size such as 64g or 512m")
        return v


class Recovery(StrictModel):
    """What `up` does on its own when training fails (docs/reliability.md)."""

    max_restarts: Annotated[int, Field(ge=0, le=1000)] = 3  # 0: stop at the first failure
    hang_timeout_minutes: Annotated[float, Field(gt=0)] = 30.0
    host_wait_minutes: Annotated[float, Field(ge=0)] = 10.0


class DeployJob(Job):
    """The inventory's `job:`: the runtime's job plus what only the deployer acts on. The job
    file written for the containers is typed as the runtime's Job, so `recovery` never
    reaches it (pydantic serialises a field by its declared type)."""

    recovery: Recovery = Recovery()


class Inventory(StrictModel):
    ssh: SshSettings = SshSettings()
    hosts: Annotated[list[HostSpec], Field(min_length=1, max_length=1024)]
    # Hosts that take a failed host's place; never given a rank until one is needed.
    spares: Annotated[list[HostSpec], Field(max_length=1024)] = []
    master: MasterSpec = MasterSpec()
    image: ImageSpec = ImageSpec()
    container: ContainerSpec = ContainerSpec()
    job: DeployJob = DeployJob()

    # Resolved views used by the planner; validation.py has already checked them.

    def ranked_hosts(self) -> list[tuple[int, HostSpec]]:
        ranks = [h.node_rank if h.node_rank is not None else i for i, h in enumerate(self.hosts)]
        return sorted(zip(ranks, self.hosts), key=lambda rh: rh[0])

    def master_host(self) -> HostSpec:
        if self.master.host is not None:
            return next(h for h in self.hosts if h.name == self.master.host)
        return self.ranked_hosts()[0][1]

    def ssh_target(self, host: HostSpec) -> SshTarget:
        merged = SshTarget().model_dump()
        for layer in (self.ssh, host.ssh):
            if layer is not None:
                merged.update({k: v for k, v in layer.model_dump().items() if v is not None})
        return SshTarget(**merged)

    def host_devices(self, host: HostSpec) -> list[int]:
        """The NPUs a host's containers are given (sorted): the host's `devices`, else the
        container's, else the job's npus_per_node NPUs 0..N-1."""
        if host.devices is not None:
            return sorted(npu_indices(host.devices))
        if self.container.devices is not None:
            return sorted(npu_indices(self.container.devices))
        return list(range(self.job.parallelism.npus_per_node)) if self.image.flavor == "ascend" else []

    def host_npus_used(self, host: HostSpec, node_rank: int) -> list[int]:
        """The NPUs the host's ranks run on. Megatron sets each rank's device to
        `rank % device_count` of the NPUs its container sees (the container numbers them
        0..D-1 in ascending order), so with exactly npus_per_node visible that is all of them,
        and with more visible each host uses a different slice."""
        visible = self.host_devices(host)
        npn = self.job.parallelism.npus_per_node
        if not visible:
            return []
        return [visible[(node_rank * npn + j) % len(visible)] for j in range(min(npn, len(visible)))]

    def driver_mounts(self) -> list[str]:
        if self.container.driver_mounts is not None:
            return list(self.container.driver_mounts)
        return list(ASCEND_DRIVER_MOUNTS) if self.image.flavor == "ascend" else []


class InventoryError(UserError):
    """Every violation found, each as one line `FILE:LINE: PATH: message`."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def parse_inventory(data: object) -> Inventory:
    """Pydantic parsing only; raises ValidationError."""
    return Inventory.model_validate(data)


def load_inventory(path: str | Path) -> Inventory:
    from q7x2_deploy.validation import validate_file  # local: validation imports this module

    inv, violations = validate_file(Path(path))
    if violations or inv is None:
        raise InventoryError([v.format(str(path)) for v in violations])
    return inv


__all__ = [
    "ASCEND_DRIVER_MOUNTS",
    "ASCEND_MANAGEMENT_DEVICES",
    "ContainerSpec",
    "DeployJob",
    "HostSpec",
    "ImageSpec",
    "Inventory",
    "InventoryError",
    "MasterSpec",
    "SshSettings",
    "SshTarget",
    "ValidationError",
    "is_loopback",
    "load_inventory",
    "npu_indices",
    "npu_ranges",
    "parse_inventory",
    "Recovery",
]
