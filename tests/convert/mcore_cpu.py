"""Test-only: run megatron-core's GPTModel on CPU and load our rank files into it.

megatron-core's forward path calls two CUDA-only things; on CPU we stand in for them:
torch.cuda.current_device (rotary embeddings put their frequencies there) returns "cpu", and
the CUDA RNG tracker (forked around dropout) becomes one whose fork() does nothing, which is
exact here because dropout is 0.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


class _NoopTracker:
    def fork(self, *args, **kwargs):
        return contextlib.nullcontext()

    def add(self, *args, **kwargs) -> None:
        pass

    def reset(self) -> None:
        pass

    def get_states(self) -> dict:
        return {}

    def set_states(self, states) -> None:
        pass

    def is_initialized(self) -> bool:
        return True


def import_megatron() -> None:
    """Import megatron-core once in the parent so forked workers start fast."""
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
    import megatron.core.models.gpt  # noqa: F401
    import megatron.core.models.gpt.gpt_layer_specs  # noqa: F401


def patch_for_cpu() -> None:
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._CUDA_RNG_STATE_TRACKER = _NoopTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def init_dist(rank: int, world: int, port: int, tp: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=1)


def build_gpt(args) -> torch.nn.Module:
    """A GPTModel shaped by a checkpoint's stored args (the local layer spec, as MindSpeed-LLM 2.0.0 uses)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        kv_channels=args.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=args.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=args.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        sequence_parallel=False,
    )
    return GPTModel(
        config=cfg,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        parallel_output=False,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=int(args.rotary_base),
    )


def mcore_logits(rank_file: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of one TP rank's GPTModel loaded from `rank_file` (full vocabulary, gathered)."""
    state = torch.load(rank_file, map_location="cpu", weights_only=False)
    model = build_gpt(state["args"]).eval()
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    assert not missing and not unexpected, (missing, unexpected)
    seq = tokens.shape[1]
    positions = torch.arange(seq).unsqueeze(0).expand_as(tokens)
    # An explicit causal mask (True = hidden): megatron-core builds its default one on CUDA.
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]
    with torch.no_grad():
        return model(tokens, positions, attention_mask=mask).float()


def tp_worker(rank: int, world: int, port: int, iter_dirs: list[str], tokens: list[torch.Tensor], out_dir: str) -> None:
    """One TP rank: for each checkpoint in turn, load this rank's file and save its logits."""
    patch_for_cpu()
    init_dist(rank, world, port, world)
    for i, (iter_dir, toks) in enumerate(zip(iter_dirs, tokens)):
        logits = mcore_logits(Path(iter_dir) / f"mp_rank_{rank:02d}/model_optim_rng.pt", toks)
        torch.save(logits, Path(out_dir) / f"logits{i}_{rank}.pt")
    torch.distributed.destroy_process_group()
