"""The argparse.Namespace stored as 'args' in every model_optim_rng.pt, and the way back to dims.

Megatron (core_r0.8.0 checkpointing.check_checkpoint_args) compares num_layers, hidden_size,
num_attention_heads, add_position_embedding, tensor_model_parallel_size and
pipeline_model_parallel_size with the training run's own arguments, and with a vocab file also
max_position_embeddings, make_vocab_size_divisible_by, padded_vocab_size and tokenizer_type.
--use-checkpoint-args reads most of the model-shape fields, so those are all filled in too,
with the values the MindSpeed-LLM Qwen2.5 recipe trains with.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from q7x2_runtime.convert.layout import Parallel
from q7x2_runtime.convert.mapping import padded_vocab_size
from q7x2_runtime.errors import UserError
from q7x2_runtime.model_dims import ModelDims

CHECKPOINT_VERSION = 3.0

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def params_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError(f"unknown --params-dtype {name!r}; use one of {', '.join(DTYPES)}") from None


def checkpoint_args(dims: ModelDims, par: Parallel, dtype_name: str, extra: dict[str, Any] | None = None) -> argparse.Namespace:
    dtype = params_dtype(dtype_name)
    uneven = len(set(par.layers_per_stage)) > 1
    values: dict[str, Any] = dict(
        num_layers=dims.num_layers,
        hidden_size=dims.hidden_size,
        ffn_hidden_size=dims.ffn_hidden_size,
        num_attention_heads=dims.num_attention_heads,
        group_query_attention=dims.num_query_groups != dims.num_attention_heads,
        num_query_groups=dims.num_query_groups,
        kv_channels=dims.head_dim,
        max_position_embeddings=dims.max_position_embeddings,
        # MindSpeed-LLM's mcore -> hf conversion reads seq_length from here and aborts on None;
        # training overrides it with its own (extra).
        seq_length=dims.max_position_embeddings,
        position_embedding_type="rope",
        add_position_embedding=True,  # Megatron's default; the Qwen2.5 recipe does not pass --no-position-embedding
        use_rotary_position_embeddings=True,
        rotary_base=dims.rotary_base,
        rotary_percent=1.0,
        rotary_interleaved=False,
        normalization="RMSNorm",
        norm_epsilon=dims.norm_epsilon,
        apply_layernorm_1p=False,
        swiglu=True,
        add_bias_linear=False,
        add_qkv_bias=dims.qkv_bias,
        untie_embeddings_and_output_weights=dims.untie_embeddings,
        # The HF vocabulary before TP padding, under our own name: Megatron's vocab_size
        # argument means something else and other tools may set it.
        hf_vocab_size=dims.vocab_size,
        padded_vocab_size=padded_vocab_size(dims, par.tp),
        make_vocab_size_divisible_by=1,
        tokenizer_type="PretrainedFromHF",
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        virtual_pipeline_model_parallel_size=None,
        num_layers_per_virtual_pipeline_stage=None,
        num_layer_list=",".join(map(str, par.layers_per_stage)) if uneven else None,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_mcore_models=True,
        transformer_impl="local",
        apply_query_key_layer_scaling=False,
        consumed_train_samples=0,
        consumed_valid_samples=0,
    )
    values.update(extra or {})
    return argparse.Namespace(**values)


def dims_from_args(args: argparse.Namespace) -> ModelDims:
    """Model dimensions of a checkpoint, from its stored args (ours or MindSpeed-LLM's)."""

    def need(name: str) -> Any:
        value = getattr(args, name, None)
        if value is None:
            raise UserError(f"checkpoint args lack {name}; cannot tell the model's shape")
        return value

    heads = need("num_attention_heads")
    groups = getattr(args, "num_query_groups", None) if getattr(args, "group_query_attention", False) else heads
    return ModelDims(
        num_layers=need("num_layers"),
        hidden_size=need("hidden_size"),
        ffn_hidden_size=need("ffn_hidden_size"),
        num_attention_heads=heads,
        num_query_groups=groups or heads,
        # Megatron itself only records the padded size; ours also keeps the HF one.
        vocab_size=getattr(args, "hf_vocab_size", None) or need("padded_vocab_size"),
        max_position_embeddings=need("max_position_embeddings"),
        rotary_base=float(getattr(args, "rotary_base", 10000.0)),
        norm_epsilon=float(getattr(args, "norm_epsilon", 1e-6)),
        untie_embeddings=bool(getattr(args, "untie_embeddings_and_output_weights", False)),
        qkv_bias=bool(getattr(args, "add_qkv_bias", False)),
    )


def layers_per_stage_from_args(args: argparse.Namespace, pp: int) -> list[int] | None:
    raw = getattr(args, "num_layer_list", None)
    if not raw:
        return None
    values = [int(x) for x in str(raw).split(",")] if isinstance(raw, str) else [int(x) for x in raw]
    return values if len(values) == pp else None
