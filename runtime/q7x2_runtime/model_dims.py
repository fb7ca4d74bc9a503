"""Model dimensions of the Qwen2.5 family: a preset for 7B, or read from an HF config.json."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ModelDims(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    ffn_hidden_size: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_query_groups: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    max_position_embeddings: int = Field(ge=1)
    rotary_base: float = Field(gt=0)
    norm_epsilon: float = Field(gt=0)
    untie_embeddings: bool = True
    qkv_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# Qwen2.5-7B's config.json (reference §1).
_PRESETS: dict[str, ModelDims] = {
    "qwen2.5-7b": ModelDims(
        num_layers=28,
        hidden_size=3584,
        ffn_hidden_size=18944,
        num_attention_heads=28,
        num_query_groups=4,
        vocab_size=152064,
        max_position_embeddings=131072,
        rotary_base=1000000.0,
        norm_epsilon=1e-6,
        untie_embeddings=True,
        qkv_bias=True,
    )
}


def preset_dims(name: str) -> ModelDims:
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(_PRESETS))}") from None


def dims_from_config_dict(cfg: dict) -> ModelDims:
    """Map HF Qwen2 config keys to Megatron's names."""
    missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size") if k not in cfg]
    if missing:
        raise ValueError(f"config.json lacks {', '.join(missing)}: not a Qwen2-architecture config")
    return ModelDims(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_query_groups=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 32768),
        rotary_base=float(cfg.get("rope_theta", 10000.0)),
        norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        untie_embeddings=not cfg.get("tie_word_embeddings", False),
        qkv_bias=True,
    )


def dims_from_hf_config(path: Path) -> ModelDims:
    """Read a config.json file, or the config.json inside a checkpoint directory."""
    if path.is_dir():
        path = path / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; give the HF checkpoint's config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return dims_from_config_dict(cfg)
