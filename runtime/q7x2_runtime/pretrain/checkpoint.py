"""Checkpoints of the CPU trainer, in Megatron's layout and file names (core_r0.8.0 checkpointing.py).

An iteration is iter_NNNNNNN/mp_rank_TT[_PPP]/ per (tp, pp) rank, each holding:
- model_optim_rng.pt: Megatron's dict - 'args' (the Namespace, checkpoint_version 3.0),
  'iteration', 'model' (this rank's mcore tensors in the params dtype, cut exactly as conversion
  cuts them, so our convert code and MindSpeed-LLM read them), 'num_floating_point_operations_so_far',
  and, as Megatron keeps them: 'opt_param_scheduler' and 'optimizer' (without the distributed
  optimizer) unless --no-save-optim, 'rng_state' unless --no-save-rng;
- distrib_optim.pt with --use-distributed-optimizer (unless --no-save-optim): the optimizer state.
The optimizer state is the CPU trainer's own (fp32 main parameters and AdamW moments under HF
names, each parameter in exactly one rank directory), so an engine can only resume its own
checkpoints' optimizer state; the model files are interchangeable.

Who writes what follows Megatron: the rank directory of (tp t, pp p) is written by the global rank
holding (t, data-parallel 0, p); the tracker by global rank 0, last. Unlike Megatron the files go
into a hidden staging directory renamed into place once every rank wrote its part, so a save cut
short never leaves an iteration that looks complete.
"""

from __future__ import annotations

import os
import random
import shutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from q7x2_runtime.convert.ckpt_args import CHECKPOINT_VERSION, checkpoint_args
from q7x2_runtime.convert.layout import RANK_FILE, Parallel, iteration_dir_name, rank_dir_name, write_tracker
from q7x2_runtime.errors import UserError
from q7x2_runtime.model_dims import ModelDims
from q7x2_runtime.pretrain.complete import DISTRIB_OPTIM_FILE
from q7x2_runtime.durable import fsync_dir as _fsync_dir

OPTIMIZER_FORMAT = "q7x2-cpu-adamw/1"


@dataclass(frozen=True)
class RankGrid:
    """Megatron's rank order (tp fastest, then data parallel, then pp)."""

    tp: int
    pp: int
    world: int

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp)

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(tp rank, data-parallel rank, pp rank) of a global rank."""
        return rank % self.tp, (rank // self.tp) % self.dp, rank // (self.tp * self.dp)

    def owned_rank_dir(self, rank: int) -> tuple[int, int] | None:
        t, d, p = self.coords(rank)
        return (t, p) if d == 0 else None


def stage_of(name: str, par: Parallel) -> int:
    """The pipeline stage holding an HF-named parameter (embedding first, norm and head last)."""
    if name.startswith("model.layers."):
        layer = int(name.split(".")[2])
        return next(p for p in range(par.pp) if layer in par.stage_layers(p))
    return 0 if name == "model.embed_tokens.weight" else par.pp - 1


def optimizer_shards(names: list[str], par: Parallel) -> dict[tuple[int, int], list[str]]:
    """Each parameter's optimizer state in one rank directory: its stage, tp ranks in turn."""
    out: dict[tuple[int, int], list[str]] = {(t, p): [] for p in range(par.pp) for t in range(par.tp)}
    seen = [0] * par.pp
    for name in names:
        p = stage_of(name, par)
        out[(seen[p] % par.tp, p)].append(name)
        seen[p] += 1
    return out


def rng_state() -> list[dict[str, Any]]:
    """Megatron's rng_state entry (one per data-parallel rank; ours are all alike). No CUDA state."""
    return [{
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "rng_tracker_states": {},
    }]  # fmt: skip


def restore_rng(entry: dict[str, Any]) -> None:
    random.setstate(entry["random_rng_state"])
    np.random.set_state(entry["np_rng_state"])
    torch.set_rng_state(entry["torch_rng_state"])


def _durable_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())




@dataclass
class SaveRequest:
    """Everything one rank needs to write its share of an iteration."""

    save_dir: Path
    iteration: int
    dims: ModelDims
    par: Parallel
    params_dtype: str
    hf_state: dict[str, torch.Tensor]  # the full model, HF names (every rank holds it)
    optimizer: dict[str, dict[str, torch.Tensor]] | None  # per HF name; None: --no-save-optim
    scheduler: dict[str, Any] | None
    rng: list[dict[str, Any]] | None  # None: --no-save-rng
    distributed_optimizer: bool
    extra_args: dict[str, Any]
    flops_so_far: float


def _write_rank_dir(req: SaveRequest, staging: Path, t: int, p: int) -> None:
    from q7x2_runtime.convert.ckpt_args import params_dtype
    from q7x2_runtime.convert.hf_source import DictSource
    from q7x2_runtime.convert.mapping import assemble, rank_tensors

    dtype = params_dtype(req.params_dtype)
    source = DictSource(req.hf_state, req.dims)
    # clone: a slice saved as a view would drag its whole storage into the file
    model = OrderedDict((s.name, assemble(s, source, dtype).clone()) for s in rank_tensors(req.dims, req.par, t, p))
    args = checkpoint_args(req.dims, req.par, req.params_dtype, {"iteration": req.iteration, **req.extra_args})
    obj: dict[str, Any] = {
        "args": args,
        "checkpoint_version": CHECKPOINT_VERSION,
        "iteration": req.iteration,
        "model": model,
        "num_floating_point_operations_so_far": req.flops_so_far,
    }
    shard = None
    if req.optimizer is not None:
        names = optimizer_shards(list(req.optimizer), req.par)[(t, p)]
        shard = {"format": OPTIMIZER_FORMAT, "iteration": req.iteration, "state": {n: req.optimizer[n] for n in names}}
        if req.scheduler is not None:
            obj["opt_param_scheduler"] = req.scheduler
        if not req.distributed_optimizer:
            obj["optimizer"] = shard
    if req.rng is not None:
        obj["rng_state"] = req.rng
    rank_dir = staging / rank_dir_name(t, p, req.par.pp)
    rank_dir.mkdir(parents=True, exist_ok=True)
    if shard is not None and req.distributed_optimizer:
        _durable_save(shard, rank_dir / DISTRIB_OPTIM_FILE)
    _durable_save(obj, rank_dir / RANK_FILE)
    _fsync_dir(rank_dir)


def save_iteration(req: SaveRequest, *, rank: int, local_rank: int, grid: RankGrid, per_node: bool,
                   barrier: Callable[[], None]) -> Path:  # fmt: skip
    """Collective: every rank calls it. Returns the iteration directory."""
    save_dir = req.save_dir
    name = iteration_dir_name(req.iteration)
    staging = save_dir / f".{name}.partial"
    final = save_dir / name
    # On shared storage one process moves the directory; per node, one per node.
    mover = local_rank == 0 if per_node else rank == 0
    if mover:
        save_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # a save cut short earlier
    barrier()
    owned = grid.owned_rank_dir(rank)
    if owned is not None:
        _write_rank_dir(req, staging, *owned)
    barrier()
    if mover and staging.is_dir():
        _fsync_dir(staging)
        old = save_dir / f".{name}.old"
        if final.exists():  # an earlier, possibly half-written, copy of this iteration
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(staging, final)
        _fsync_dir(save_dir)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    if rank == 0:  # as Megatron: the tracker moves last, on global rank 0
        write_tracker(save_dir, req.iteration)
    barrier()
    return final


def _torch_load(path: Path) -> Any:
    # Our own files: the args Namespace and numpy RNG state need the full unpickler.
    return torch.load(path, map_location="cpu", weights_only=False)


def read_optimizer(load_dir: Path, iteration: int, par: Parallel, distributed_optimizer: bool) -> dict[str, dict[str, torch.Tensor]]:
    """The optimizer state of every parameter, merged from every rank directory."""
    iter_dir = Path(load_dir) / iteration_dir_name(iteration)
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for p in range(par.pp):
        for t in range(par.tp):
            rank_dir = iter_dir / rank_dir_name(t, p, par.pp)
            if distributed_optimizer:
                path = rank_dir / DISTRIB_OPTIM_FILE
                if not path.is_file():
                    raise UserError(
                        f"{path} does not exist: the checkpoint holds no distributed-optimizer state (saved with "
                        "--no-save-optim or without --use-distributed-optimizer); give --no-load-optim or --finetune"
                    )
                shard = _torch_load(path)
            else:
                shard = _torch_load(rank_dir / RANK_FILE).get("optimizer")
                if shard is None:
                    raise UserError(
                        f"{rank_dir / RANK_FILE} holds no optimizer state (saved with --no-save-optim or with "
                        "--use-distributed-optimizer); give --no-load-optim or --finetune"
                    )
            if not isinstance(shard, dict) or shard.get("format") != OPTIMIZER_FORMAT:
                raise UserError(f"{rank_dir}: optimizer state of another trainer; give --no-load-optim to start the optimizer afresh")
            merged.update(shard["state"])
    return merged


def read_rank_file(load_dir: Path, iteration: int, t: int, p: int, pp: int) -> dict[str, Any]:
    return _torch_load(Path(load_dir) / iteration_dir_name(iteration) / rank_dir_name(t, p, pp) / RANK_FILE)
