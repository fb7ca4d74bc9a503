"""Checkpoints of the CPU trainer: Megatron-mcore model files plus a trainer-state side file.

The model goes through the conversion code, so the saved layout (tp/pp split, key names, tracker
file) is exactly what conversion writes and MindSpeed-LLM loads. Megatron-format files from
conversion carry no optimizer, so the state needed for an exact resume - fp32 main parameters
(the model files may be bf16), AdamW moments, RNG and data position - goes into
iter_XXXXXXX/q7x2_trainer_state.pt next to them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from q7x2_runtime.jobspec import Job
from q7x2_runtime.model_dims import ModelDims

TRAINER_STATE = "q7x2_trainer_state.pt"
TRAINER_STATE_FORMAT = 1


@dataclass(frozen=True)
class StartPoint:
    load_dir: Path
    iteration: int | None  # the checkpoint iteration to read (None: the tracker's)
    resume: bool  # True: continue a run from save_dir; False: start from the converted weights


def iteration_dir(save_dir: Path, iteration: int) -> Path:
    return save_dir / f"iter_{iteration:07d}"


def convert_api():
    """The conversion package's training API (re-exported by q7x2_runtime.convert, defined in .api)."""
    try:
        from q7x2_runtime.convert import load_mcore_as_hf_state_dict, read_latest_iteration, save_hf_state_dict_as_mcore
    except ImportError:
        from q7x2_runtime.convert.api import load_mcore_as_hf_state_dict, read_latest_iteration, save_hf_state_dict_as_mcore
    return load_mcore_as_hf_state_dict, read_latest_iteration, save_hf_state_dict_as_mcore


def find_start(job: Job) -> StartPoint:
    """Resume from the newest checkpoint in save_dir if there is one, else start from mcore_weights."""
    read_latest_iteration = convert_api()[1]
    save_dir = Path(job.paths.save_dir)
    latest = read_latest_iteration(save_dir) if save_dir.is_dir() else None
    if latest is not None and latest > 0:
        return StartPoint(save_dir, latest, resume=True)
    return StartPoint(Path(job.paths.mcore_weights), None, resume=False)


def is_writer(job: Job, rank: int, local_rank: int) -> bool:
    """Shared storage: one copy, by global rank 0. Per-node storage: every node keeps its own copy."""
    return rank == 0 if job.storage == "shared" else local_rank == 0


def save_checkpoint(
    job: Job, dims: ModelDims, model: torch.nn.Module, trainer_state: dict, iteration: int
) -> Path:
    """Write iteration's checkpoint into save_dir.

    The model files are written to a temporary directory renamed into place, then the tracker
    file moves, so a crash mid-save leaves the previous checkpoint as the one a restart resumes
    from. The trainer state is serialised beforehand and only renamed into the finished
    iteration directory, leaving a window of one rename in which a resume would lack it.
    """
    save_hf_state_dict_as_mcore = convert_api()[2]
    save_dir = Path(job.paths.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    p = job.parallelism
    iter_dir = iteration_dir(save_dir, iteration)
    tmp = save_dir / f".{TRAINER_STATE}.{iteration}.tmp-{os.getpid()}"
    torch.save(trainer_state, tmp)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_hf_state_dict_as_mcore(
        state,
        dims,
        save_dir,
        tp=p.tp,
        pp=p.pp,
        num_layer_list=job.layer_list(),
        iteration=iteration,
        params_dtype=job.training.params_dtype,
        extra_args=_megatron_args(job, iteration),
    )
    os.replace(tmp, iter_dir / TRAINER_STATE)
    return iter_dir


def _megatron_args(job: Job, iteration: int) -> dict:
    """Training arguments Megatron records in a checkpoint's args (read back on resume checks)."""
    t = job.training
    return {
        "seq_length": t.seq_length,
        "micro_batch_size": t.micro_batch_size,
        "global_batch_size": t.global_batch_size,
        "train_iters": t.train_iters,
        "consumed_train_samples": iteration * t.global_batch_size,
        "lr": t.lr,
        "min_lr": t.min_lr,
        "seed": t.seed,
    }


def load_trainer_state(load_dir: Path, iteration: int) -> dict | None:
    path = iteration_dir(load_dir, iteration) / TRAINER_STATE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != TRAINER_STATE_FORMAT or state.get("iteration") != iteration:
        return None
    return state
