"""Checkpoint conversion between HF safetensors and Megatron-mcore (MindSpeed-LLM 2.0.0 layout).

Command line: `q7x2-runtime convert` (see convert/cli.py). Python API for training code:

- ``load_mcore_as_hf_state_dict(load_dir, iteration=None) -> (ModelDims, dict[str, Tensor])``
  merges every TP/PP shard of ``load_dir/iter_<N>`` (N from latest_checkpointed_iteration.txt
  unless given) into full tensors named like HF Qwen2 (model.embed_tokens.weight,
  model.layers.N.self_attn.q_proj.weight, ..., lm_head.weight). Dims come from the
  checkpoint's stored args; tensors keep the checkpoint's dtype.
- ``save_hf_state_dict_as_mcore(state, dims, save_dir, tp, pp, num_layer_list, iteration,
  params_dtype="bf16", extra_args=None)`` writes ``save_dir/iter_<N>/mp_rank_.../model_optim_rng.pt``
  exactly as the converter does (atomic per iteration, sha256 manifest inside) and then
  replaces latest_checkpointed_iteration.txt atomically.
- ``read_latest_iteration(save_dir) -> int | None``.

Both the CLI and this API use the single tensor mapping in convert/mapping.py.
Rank files hold a pickled argparse.Namespace, so reading them needs
``torch.load(..., weights_only=False)`` on torch >= 2.6 (torch 2.1 does that by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["load_mcore_as_hf_state_dict", "save_hf_state_dict_as_mcore", "read_latest_iteration"]

if TYPE_CHECKING:
    from q7x2_runtime.convert.api import load_mcore_as_hf_state_dict, read_latest_iteration, save_hf_state_dict_as_mcore


def __getattr__(name: str) -> Any:
    # torch is imported only when the API is used, so `q7x2-runtime --help` stays fast.
    if name in __all__:
        from q7x2_runtime.convert import api

        return getattr(api, name)
    raise AttributeError(name)
