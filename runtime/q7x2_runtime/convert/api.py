"""Python API for training code: read and write Megatron-mcore checkpoints as HF-named tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from q7x2_runtime.convert.ckpt_args import checkpoint_args, params_dtype as dtype_of
from q7x2_runtime.convert.hf_source import DictSource
from q7x2_runtime.convert.layout import iteration_dir_name, plan_parallel, write_tracker
from q7x2_runtime.convert.layout import read_latest_iteration as _read_latest
from q7x2_runtime.convert.mapping import EMBED, LM_HEAD
from q7x2_runtime.convert.mcore_source import McoreCheckpoint
from q7x2_runtime.convert.output import AtomicDir
from q7x2_runtime.convert.to_mcore import write_iteration
from q7x2_runtime.model_dims import ModelDims


def read_latest_iteration(save_dir: Path) -> int | None:
    """The iteration in save_dir/latest_checkpointed_iteration.txt, or None if there is none yet."""
    return _read_latest(Path(save_dir))


def load_mcore_as_hf_state_dict(load_dir: Path, iteration: int | None = None) -> tuple[ModelDims, dict[str, torch.Tensor]]:
    """Merge every TP/PP shard of a checkpoint into full tensors with HF Qwen2 names.

    `iteration` defaults to the tracker file's. Tensors keep the checkpoint's dtype. For a
    tied-embedding model lm_head.weight is the same tensor object as model.embed_tokens.weight,
    so Qwen2ForCausalLM.load_state_dict accepts the dict either way.
    """
    ckpt = McoreCheckpoint(Path(load_dir), iteration)
    dtype = ckpt.dtype()
    state: dict[str, torch.Tensor] = {}
    for _unit, hf_parts in ckpt.units(dtype):
        for name, parts in hf_parts.items():
            # Parts may be read-only views of the files; the caller gets its own writable copy.
            state[name] = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
    if not ckpt.dims.untie_embeddings:
        state[LM_HEAD] = state[EMBED]
    return ckpt.dims, state


def save_hf_state_dict_as_mcore(
    state: dict[str, torch.Tensor],
    dims: ModelDims,
    save_dir: Path,
    tp: int,
    pp: int,
    num_layer_list: list[int] | None,
    iteration: int,
    params_dtype: str = "bf16",
    extra_args: dict[str, Any] | None = None,
) -> None:
    """Write HF-named tensors as save_dir/iter_<iteration>/mp_rank_*/model_optim_rng.pt.

    The iteration directory is written under a temporary name and renamed when complete (an
    existing one for the same iteration is replaced), then latest_checkpointed_iteration.txt
    is replaced atomically. extra_args are added to the stored args Namespace (e.g. the
    training's seq_length or consumed_train_samples).
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    dtype = dtype_of(params_dtype)
    par = plan_parallel(dims, tp, pp, num_layer_list)
    args = checkpoint_args(dims, par, params_dtype, {"iteration": iteration, **(extra_args or {})})
    source = DictSource(state, dims)
    final = save_dir / iteration_dir_name(iteration)
    with AtomicDir(final, force=True) as out:
        out.meta = {"format": "megatron-mcore", "tp": tp, "pp": pp, "iteration": iteration}
        write_iteration(out.path, dims, par, source, dtype, args, iteration, on_file=out.add)
    write_tracker(save_dir, iteration)

