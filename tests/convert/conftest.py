"""Tiny Qwen2 checkpoints built with transformers, shared by the conversion tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = dict(
    num_hidden_layers=4,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=128,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)


def make_hf(path: Path, tie: bool = False, shard_size: str = "40KB", dtype: torch.dtype = torch.bfloat16, **over) -> Path:
    """Save a random Qwen2ForCausalLM in several safetensors shards (so the index matters)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(**{**TINY, **over}, tie_word_embeddings=tie)
    model = Qwen2ForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        # Non-zero biases and norms so that a misplaced piece changes the logits.
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(path, max_shard_size=shard_size)
    (path / "tokenizer.json").write_text('{"version": "1.0"}', encoding="utf-8")
    (path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf(tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="session")
def tiny_hf_kv4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf(tmp_path_factory.mktemp("hf") / "tiny-kv4", num_attention_heads=8, num_key_value_heads=4)


@pytest.fixture(scope="session")
def tiny_hf_tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf(tmp_path_factory.mktemp("hf") / "tiny-tied", tie=True)
