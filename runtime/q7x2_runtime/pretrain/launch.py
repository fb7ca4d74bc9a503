"""The two engines' launch commands and environments for one node.

mindspeed: torchrun + MindSpeed-LLM's pretrain_gpt.py with the reference argument set (built by
q7x2_runtime.steps), in the CANN environment. torch: torchrun + this package's CPU trainer.
Both run under torchrun's static rendezvous with the job's connect timeout, so a missing peer
ends the launch after a bounded time.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.pretrain.node import Placement

EngineName = Literal["mindspeed", "torch"]
ENGINES: tuple[EngineName, ...] = ("mindspeed", "torch")


def default_engine(spec: JobSpec) -> EngineName:
    return "mindspeed" if spec.cluster.flavor == "ascend" else "torch"


def placed_spec(spec: JobSpec, placement: Placement) -> JobSpec:
    """The job with the master the container was given (the environment wins over the file)."""
    cluster = spec.cluster.model_copy(update={"master_addr": placement.master_addr, "master_port": placement.master_port})
    return spec.model_copy(update={"cluster": cluster})


def mindspeed_argv(spec: JobSpec, placement: Placement) -> list[str]:
    from q7x2_runtime.steps import pretrain_torchrun_argv

    placed = placed_spec(spec, placement)
    cluster = placed.cluster.model_copy(update={"connect_timeout_s": placement.connect_timeout_s})
    return pretrain_torchrun_argv(placed.model_copy(update={"cluster": cluster}), placement.node_rank)


def torch_argv(job_file: Path, placement: Placement, *, exit_interval: int | None = None, python: str = sys.executable) -> list[str]:
    argv = [
        python, "-m", "torch.distributed.run",
        "--nnodes", str(placement.nnodes),
        "--node-rank", str(placement.node_rank),
        "--nproc-per-node", str(placement.nproc_per_node),
        "--master-addr", placement.master_addr,
        "--master-port", str(placement.master_port),
        "--rdzv-conf", f"timeout={placement.connect_timeout_s}",
        "--max-restarts", "0",
        "--monitor-interval", "1",
        "-m", "q7x2_runtime.pretrain.trainer",
        "--job", str(job_file),
    ]  # fmt: skip
    if exit_interval is not None:
        argv += ["--exit-interval", str(exit_interval)]
    return argv


def base_environment(spec: JobSpec, container_env: Mapping[str, str]) -> dict[str, str]:
    """The job's env (HCCL_*, GLOO_*, ...) under the container's own: per-host values such as
    GLOO_SOCKET_IFNAME come from the container and must win over job-wide defaults."""
    env = dict(spec.job.env)
    env.update(container_env)
    return env


def mindspeed_environment(spec: JobSpec, container_env: Mapping[str, str], cann_scripts: tuple[str, ...] | None = None) -> dict[str, str]:
    from q7x2_runtime.run_step import CANN_ENV_SCRIPTS, cann_environment

    env = cann_environment(base_environment(spec, container_env), cann_scripts if cann_scripts is not None else CANN_ENV_SCRIPTS)
    # Megatron's requirement for overlapping communication with compute on the device.
    env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    return env


def torch_environment(spec: JobSpec, container_env: Mapping[str, str]) -> dict[str, str]:
    env = base_environment(spec, container_env)
    # One thread per rank unless the operator says otherwise: ranks share the host's cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def log_file(spec: JobSpec, node_rank: int) -> Path:
    from q7x2_runtime.steps import pretrain_log_name

    return Path(spec.job.paths.logs) / pretrain_log_name(spec, node_rank)
