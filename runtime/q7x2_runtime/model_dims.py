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


# Qwen2.5-7B's config.json as published with the model.
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


def _rope_theta(cfg: dict) -> float:
    # transformers 5 writes rope_theta inside rope_parameters; released Qwen2.5 configs at the top.
    if "rope_theta" in cfg:
        return cfg["rope_theta"]
    nested = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if isinstance(nested, dict) and "rope_theta" in nested:
        return nested["rope_theta"]
    return 10000.0


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
        rotary_base=float(_rope_theta(cfg)),
        norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        untie_embeddings=not cfg.get("tie_word_embeddings", False),
        qkv_bias=True,
    )


class ConfigMissing(ValueError):
    """config.json does not exist (callers add what to give instead)."""


def read_config_json(path: Path) -> dict:
    """An HF config.json (or the one inside a checkpoint directory) as a dict."""
    if path.is_dir():
        path = path / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigMissing(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return cfg


def dims_from_hf_config(path: Path) -> ModelDims:
    try:
        cfg = read_config_json(path)
    except ConfigMissing as e:
        raise ValueError(f"{e}; give the HF checkpoint's config.json") from None
    return dims_from_config_dict(cfg)
