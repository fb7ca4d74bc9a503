"""The two engines' launch commands and environments for one node.

One torchrun line, built by q7x2_runtime.steps, with the reference argument set of a first start
or a resume: mindspeed runs MindSpeed-LLM's pretrain_gpt.py in the CANN environment; torch runs
this package's CPU trainer (`-m q7x2_runtime.pretrain.trainer`) on the same arguments. Both run
under torchrun's static rendezvous with the job's connect timeout, so a missing peer ends the
launch after a bounded time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.pretrain.node import Placement
from q7x2_runtime.steps import StartKind

EngineName = Literal["mindspeed", "torch"]
ENGINES: tuple[EngineName, ...] = ("mindspeed", "torch")
CONNECT_TIMEOUT_ENV = "Q7X2_CONNECT_TIMEOUT_S"


def default_engine(spec: JobSpec) -> EngineName:
    return "mindspeed" if spec.cluster.flavor == "ascend" else "torch"


def placed_spec(spec: JobSpec, placement: Placement) -> JobSpec:
    """The job with the master the container was given (the environment wins over the file)."""
    cluster = spec.cluster.model_copy(update={"master_addr": placement.master_addr, "master_port": placement.master_port})
    return spec.model_copy(update={"cluster": cluster})


def engine_spec(spec: JobSpec, placement: Placement, engine: EngineName) -> JobSpec:
    """The job as this node runs it: the container's master, its connect timeout, and the
    flavor matching the engine (the flavor picks torchrun's entry point in steps.py)."""
    placed = placed_spec(spec, placement)
    cluster = placed.cluster.model_copy(update={
        "connect_timeout_s": placement.connect_timeout_s,
        "flavor": "ascend" if engine == "mindspeed" else "cpu",
    })  # fmt: skip
    return placed.model_copy(update={"cluster": cluster})


def engine_argv(spec: JobSpec, placement: Placement, engine: EngineName, start: StartKind, *, exit_interval: int | None = None) -> list[str]:
    """The exact torchrun line for this node: the one `plan` shows for this start kind (plus
    Megatron's --exit-interval when asked for)."""
    from q7x2_runtime.steps import pretrain_torchrun_argv

    argv = pretrain_torchrun_argv(engine_spec(spec, placement, engine), placement.node_rank, start)
    if exit_interval is not None:
        argv += ["--exit-interval", str(exit_interval)]
    return argv


def mindspeed_argv(spec: JobSpec, placement: Placement, start: StartKind = "first") -> list[str]:
    return engine_argv(spec, placement, "mindspeed", start)


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


def torch_environment(spec: JobSpec, container_env: Mapping[str, str], python: str = sys.executable) -> dict[str, str]:
    env = base_environment(spec, container_env)
    # `torchrun` is installed next to the interpreter that runs us (a venv's bin/ need not be on PATH).
    bindir = str(Path(python).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(x for x in (bindir, env.get("PATH", "")) if x)
    # The trainer's collectives wait at least this long (a peer's save), at most a vanished peer's.
    env.setdefault(CONNECT_TIMEOUT_ENV, str(spec.cluster.connect_timeout_s))
    # One thread per rank unless the operator says otherwise: ranks share the host's cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def log_file(spec: JobSpec, node_rank: int) -> Path:
    from q7x2_runtime.steps import pretrain_log_name

    return Path(spec.job.paths.logs) / pretrain_log_name(spec, node_rank)
