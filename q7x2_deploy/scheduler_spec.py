"""The inventory's `scheduler:` section: who places the job's nodes.

`kind: ssh` (the default) is the deployer's own fan-out over `hosts[]`. With `slurm` or
`kubernetes` a scheduler places `nodes` nodes x `job.parallelism.npus_per_node` NPUs, and the
settings of that scheduler's subsection apply. validation.py says which keys apply to which kind.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from q7x2_deploy.text_types import matching
from q7x2_deploy.addresses import check_address
from q7x2_runtime.jobspec import StrictModel
from q7x2_runtime.safe_text import check_safe_path, show

SchedulerKind = Literal["ssh", "slurm", "kubernetes"]
SCHEDULER_KINDS: tuple[SchedulerKind, ...] = ("ssh", "slurm", "kubernetes")
MAX_NODES = 1024



# Partition and account names as sites write them; nothing a shell or sbatch would read apart.
SlurmName = Annotated[str, matching(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", "a Slurm name ([A-Za-z0-9_.-], at most 64)")]
# name[:type]:count, e.g. gpu:npu:8 (NPUs declared as GPUs of Type=npu) or npu:8.
_GRES = re.compile(r"([a-z][a-z0-9_]{0,31})(?::([A-Za-z0-9_.-]{1,32}))?:([0-9]{1,3})")
# sbatch --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, or UNLIMITED.
_TIME = re.compile(r"[0-9]{1,7}(?::[0-9]{1,2}){0,2}|[0-9]{1,4}-[0-9]{1,2}(?::[0-9]{1,2}){0,2}|UNLIMITED|INFINITE")
# A Kubernetes namespace or queue: an RFC 1123 label.
K8sName = Annotated[str, matching(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?", "a Kubernetes name (RFC 1123 label: [a-z0-9-], at most 63)")]


def gres_count(gres: str) -> int:
    """The count of a validated GRES request (`gpu:npu:8` -> 8)."""
    m = _GRES.fullmatch(gres)
    assert m is not None  # validated on parsing
    return int(m.group(3))


class SlurmSettings(StrictModel):
    # The host sbatch runs on: a name from hosts[] (its address and ssh settings) or an address.
    login: str | None = None
    partition: SlurmName | None = None
    account: SlurmName | None = None
    # The per-node GRES request. Default: gpu:<npus_per_node> on ascend (NPUs declared as GPUs of
    # Type=npu give each step SLURM_STEP_GPUS), none on cpu.
    gres: str | None = None
    time: str | None = None  # sbatch --time; default: the partition's limit
    container: Literal["docker", "none"] = "docker"  # none: q7x2-runtime installed on the nodes
    # Where the job's output file goes: a directory the batch node shares with the login host
    # (the login host reads it). Default: the submitting user's home directory.
    output_dir: str | None = None

    @field_validator("login")
    @classmethod
    def _login(cls, v: str | None) -> str | None:
        if v is not None:
            check_address(v)  # a host name from hosts[] also passes as a DNS name
        return v

    @field_validator("gres")
    @classmethod
    def _gres(cls, v: str | None) -> str | None:
        if v is not None and not _GRES.fullmatch(v):
            raise ValueError(f"{show(v)} is not a GRES request name[:type]:count such as gpu:npu:8 or npu:8")
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and not _TIME.fullmatch(v):
            raise ValueError(f"{show(v)} is not a Slurm time limit such as 7-00:00:00, 12:00:00 or 90 (minutes)")
        return v

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, v: str | None) -> str | None:
        if v is None:
            return v
        check_safe_path(v)
        if not v.startswith("/"):
            raise ValueError(f"{show(v)} must be an absolute path")
        return v


class KubernetesSettings(StrictModel):
    namespace: K8sName = "default"
    kind: Literal["AscendJob", "VolcanoJob"] = "AscendJob"
    queue: K8sName = "default"  # the Volcano queue
    kubeconfig: str | None = None  # default: the client's own (KUBECONFIG, ~/.kube/config)

    @field_validator("kubeconfig")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            check_safe_path(v)
        return v


class SchedulerSpec(StrictModel):
    kind: SchedulerKind = "ssh"
    # Nodes the scheduler places (slurm, kubernetes). Default: the number of hosts[] listed.
    nodes: Annotated[int, Field(ge=1, le=MAX_NODES)] | None = None
    slurm: SlurmSettings | None = None
    kubernetes: KubernetesSettings | None = None

    @property
    def placed(self) -> bool:
        """True when a scheduler, not hosts[], decides where the nodes run."""
        return self.kind != "ssh"


__all__ = ["KubernetesSettings", "SCHEDULER_KINDS", "SchedulerKind", "SchedulerSpec", "SlurmSettings", "gres_count"]
