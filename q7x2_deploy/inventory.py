"""The inventory: hosts, SSH defaults, master, image, container settings and the job.

Parsing (pydantic) checks each value on its own; validation.py checks how values fit
together. `validation.load_inventory` runs both and raises one InventoryError listing every violation.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PlainValidator, PrivateAttr, ValidationError, field_validator

from q7x2_deploy.text_types import matching
from q7x2_deploy.addresses import check_address, is_loopback
from q7x2_deploy.scheduler_spec import SchedulerSpec, SlurmSettings
from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import EnvMap, Job, StrictModel
from q7x2_runtime.safe_text import check_safe_path, show



# Host names become container names, labels and file names: keep them plain.
HostName = Annotated[str, matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", "a host name ([A-Za-z0-9_.-], at most 63, starting with a letter or digit)")]
# Linux interface names: at most 15 characters, no slashes or spaces, not . or ..
NicName = Annotated[str, matching(r"(?!\.{1,2}\Z)[A-Za-z0-9_.:-]{1,15}", "a network interface name (at most 15 of [A-Za-z0-9_.:-])")]
UserName = Annotated[str, matching(r"[a-z_][a-z0-9_-]{0,31}", "a user name ([a-z_][a-z0-9_-]*, at most 32)")]
Port = Annotated[int, Field(ge=1, le=65535)]
# Docker's reference grammar; a repository is at most 255 characters.
_IMAGE_REPO = re.compile(r"(?=.{1,255}\Z)[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHM_SIZE = re.compile(r"([0-9]{1,16})([bkmgBKMG]?)")
_SHM_UNIT = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# /dev/shm is memory: more than a few TiB is no host's.
MAX_SHM_BYTES = 8 << 40

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
MAX_NPUS = 64


def _devices(v: object) -> int | list[int]:
    """A count of NPUs (0..64) or a list of NPU indices (0..63); booleans are neither."""
    if isinstance(v, int) and not isinstance(v, bool):
        if not 0 <= v <= MAX_NPUS:
            raise ValueError(f"{v} NPUs: give a count from 0 to {MAX_NPUS}")
        return v
    if isinstance(v, list):
        if len(v) > MAX_NPUS:
            raise ValueError(f"lists {len(v)} NPUs: at most {MAX_NPUS}")
        for x in v:
            if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < MAX_NPUS:
                raise ValueError(f"{show(x)} is not an NPU index (0 to {MAX_NPUS - 1})")
        return list(v)
    raise ValueError(f"{show(v)}: give a count of NPUs or a list of NPU indices")


# One validator instead of a union: a union reports one error per branch under made-up names.
Devices = Annotated[int | list[int], PlainValidator(_devices)]


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


def mount_point(path: str) -> PurePosixPath:
    """An absolute path as the kernel resolves it: `//x/./y/` is `/x/y` (PurePosixPath alone
    keeps a leading `//`)."""
    return PurePosixPath("/" + path.lstrip("/"))


def _absolute_mount(v: str) -> str:
    """A host directory or file bind-mounted into containers (`-v SRC:DST[:ro]`)."""
    check_safe_path(v)
    if not v.startswith("/"):
        raise ValueError(f"{show(v)} must be an absolute path")
    if ":" in v:
        raise ValueError(f"{show(v)} contains ':', which `docker run -v` reads as a separator")
    if mount_point(v) == PurePosixPath("/"):
        raise ValueError("'/' cannot be mounted: it would hide the whole image")
    return v


MountPath = Annotated[str, AfterValidator(_absolute_mount)]


class SshSettings(StrictModel):
    user: UserName | None = None
    port: Port | None = None
    identity: str | None = None
    known_hosts: str | None = None

    @field_validator("identity", "known_hosts")
    @classmethod
    def _path_safe(cls, v: str | None) -> str | None:
        if v is not None:
            check_safe_path(v)
        return v


class SshDefaults(SshSettings):
    """The inventory's top-level `ssh`: every host's defaults, and the OpenSSH client
    configuration to read (default ~/.ssh/config; `--ssh-config` overrides it)."""

    config: str | None = None

    @field_validator("config")
    @classmethod
    def _config_path_safe(cls, v: str | None) -> str | None:
        if v is not None:
            check_safe_path(v)
        return v


class SshTarget(StrictModel):
    """The inventory's SSH settings of one host (defaults merged with its overrides). None
    means the inventory does not say: the ssh config file or the built-in default decides
    (q7x2_deploy.ssh_route)."""

    user: str | None = None
    port: int | None = None
    identity: str | None = None
    known_hosts: str | None = None
    config: str | None = None


class HostSpec(StrictModel):
    name: HostName
    address: str
    node_rank: Annotated[int, Field(ge=0, lt=1024)] | None = None
    ssh: SshSettings | None = None
    nic: NicName | None = None
    devices: Devices | None = None
    env: EnvMap = {}

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return check_address(v)


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
        if not _IMAGE_REPO.fullmatch(v):
            raise ValueError(f"{show(v)} is not a Docker repository name (lowercase, at most 255 characters, e.g. registry:5000/team/image)")
        return v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not _IMAGE_TAG.fullmatch(v):
            raise ValueError(f"{show(v)} is not a Docker tag ([A-Za-z0-9_.-], at most 128 characters)")
        return v

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


class ContainerSpec(StrictModel):
    name_prefix: Annotated[str, matching(r"[a-z0-9][a-z0-9_-]{0,30}", "a container name prefix ([a-z0-9_-], at most 31)")] = "q7x2"
    devices: Devices | None = None  # default: the job's npus_per_node NPUs (0..N-1) on ascend, none on cpu
    driver_mounts: Annotated[list[MountPath], Field(max_length=64)] | None = None  # default: ASCEND_DRIVER_MOUNTS on ascend
    volumes: Annotated[list[MountPath], Field(max_length=64)] = ["/apps", "/home"]
    network_host: bool = True
    ipc_host: bool = True
    shm_size: str = "64g"
    privileged: bool = False
    # Host directory holding each job's spec (mounted read-only into its containers).
    state_dir: str = "/var/lib/q7x2"

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, v: str) -> str:
        return _absolute_mount(v)  # its job directory is bind-mounted into every container

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, v: str) -> str:
        m = _SHM_SIZE.fullmatch(v)
        if not m:
            raise ValueError(f"{show(v)} is not a size such as 64g or 512m")
        size = int(m.group(1)) * _SHM_UNIT[m.group(2).lower()]
        if not 1 << 20 <= size <= MAX_SHM_BYTES:
            raise ValueError(f"{show(v)} is outside 1m .. {MAX_SHM_BYTES >> 30}g")
        return v


class Recovery(StrictModel):
    """What `up` does on its own when training fails (docs/reliability.md)."""

    max_restarts: Annotated[int, Field(ge=0, le=1000)] = 3  # 0: stop at the first failure
    hang_timeout_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] = 30.0  # at most a week
    host_wait_minutes: Annotated[float, Field(ge=0, le=7 * 24 * 60)] = 10.0


class DeployJob(Job):
    """The inventory's `job:`: the runtime's job plus what only the deployer acts on. The job
    file written for the containers is typed as the runtime's Job, so `recovery` never
    reaches it (pydantic serialises a field by its declared type)."""

    recovery: Recovery = Recovery()


class Inventory(StrictModel):
    ssh: SshDefaults = SshDefaults()
    # Required with scheduler kind ssh; with slurm or kubernetes the scheduler places the nodes
    # (hosts listed then only give node names their addresses and SSH settings).
    hosts: Annotated[list[HostSpec], Field(max_length=1024)] = []
    # Hosts that take a failed host's place; never given a rank until one is needed.
    spares: Annotated[list[HostSpec], Field(max_length=1024)] = []
    master: MasterSpec = MasterSpec()
    image: ImageSpec = ImageSpec()
    container: ContainerSpec = ContainerSpec()
    job: DeployJob = DeployJob()
    scheduler: SchedulerSpec = SchedulerSpec()
    # The file this inventory was read from, for messages about what was computed from it.
    _source: str = PrivateAttr(default="inventory")

    @property
    def source(self) -> str:
        return self._source

    # Resolved views used by the planner; validation.py has already checked them.

    @property
    def nnodes(self) -> int:
        """Nodes of the job: hosts[] with ssh; scheduler.nodes (default: len(hosts)) otherwise."""
        if self.scheduler.placed and self.scheduler.nodes is not None:
            return self.scheduler.nodes
        return len(self.hosts)

    def slurm(self) -> SlurmSettings:
        return self.scheduler.slurm or SlurmSettings()

    def host_named(self, name: str) -> HostSpec | None:
        return next((h for h in self.hosts if h.name == name), None)

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
    # The inventory context turns on the rules only an operator's input needs (one model source).
    return Inventory.model_validate(data, context={"inventory": True})


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
    "SshDefaults",
    "SshSettings",
    "SchedulerSpec",
    "SlurmSettings",
    "SshTarget",
    "ValidationError",
    "is_loopback",
    "npu_indices",
    "npu_ranges",
    "parse_inventory",
    "Recovery",
]
