"""A tiny Qwen2.5-architecture checkpoint: config.json, two safetensors shards and their index.

Weights come from a seeded numpy RNG so no torch is needed to write them. The shards are cut by
size in HF key order, the way `save_pretrained` shards, so a layer straddles the two files and
readers are forced to go through the index's weight_map.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TinyDims:
    num_layers: int = 4
    hidden_size: int = 64
    intermediate_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def hf_config(d: TinyDims, vocab_size: int, eos_id: int) -> dict:
    """config.json with the keys of Qwen2.5-7B's, scaled down."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": d.hidden_size,
        "initializer_range": d.init_std,
        "intermediate_size": d.intermediate_size,
        "max_position_embeddings": d.max_position_embeddings,
        "max_window_layers": d.num_layers,
        "model_type": "qwen2",
        "num_attention_heads": d.num_attention_heads,
        "num_hidden_layers": d.num_layers,
        "num_key_value_heads": d.num_key_value_heads,
        "rms_norm_eps": d.rms_norm_eps,
        "rope_theta": d.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": False,
        # float32: numpy has no bfloat16, and conversion casts to the job's params dtype anyway.
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def hf_tensor_shapes(d: TinyDims, vocab_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of a Qwen2ForCausalLM checkpoint, in the order HF writes them."""
    h, i, dh = d.hidden_size, d.intermediate_size, d.head_dim
    q, kv = d.num_attention_heads * dh, d.num_key_value_heads * dh
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab_size, h))]
    for n in range(d.num_layers):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.q_proj.bias", (q,)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.k_proj.bias", (kv,)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.bias", (kv,)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab_size, h))]
    return out


def random_weights(d: TinyDims, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """Normal(0, std) matrices; norms near one; small non-zero biases so bias handling is exercised."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out: dict[str, np.ndarray] = {}
    for name, shape in hf_tensor_shapes(d, vocab_size):
        if name.endswith("norm.weight"):
            arr = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            arr = 0.1 * rng.standard_normal(shape, dtype=np.float32)
        else:
            arr = d.init_std * rng.standard_normal(shape, dtype=np.float32)
        out[name] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


def write_sharded(weights: dict[str, np.ndarray], order: list[str], out_dir: Path, num_shards: int = 2) -> None:
    """Split by cumulative size in `order` into num_shards files plus model.safetensors.index.json."""
    from safetensors.numpy import save_file

    total = sum(weights[k].nbytes for k in order)
    per_shard = total / num_shards
    shards: list[list[str]] = [[] for _ in range(num_shards)]
    acc = 0
    for k in order:
        idx = min(int(acc // per_shard), num_shards - 1)
        shards[idx].append(k)
        acc += weights[k].nbytes
    weight_map: dict[str, str] = {}
    for n, keys in enumerate(shards, start=1):
        fname = f"model-{n:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: weights[k] for k in keys}, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
