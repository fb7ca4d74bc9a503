"""Model dimensions of the Qwen2.5 family: a preset for 7B, or read from an HF config.json."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from q7x2_runtime.bounded_read import NoSuchFile, read_regular_file
from q7x2_runtime.safe_text import show


# Plausible ranges, far beyond any released model (Qwen2.5-72B: 80 layers, hidden 8192,
# 64 heads, vocab 152064), checked before any arithmetic so a hostile value cannot make the
# deployer loop or allocate for it.
MAX_LAYERS = 1024
MAX_HIDDEN = 65536
MAX_FFN = 1 << 20
MAX_HEADS = 1024
MAX_VOCAB = 1 << 23
MAX_POSITIONS = 1 << 24


class ModelDims(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    num_layers: int = Field(ge=1, le=MAX_LAYERS)
    hidden_size: int = Field(ge=1, le=MAX_HIDDEN)
    ffn_hidden_size: int = Field(ge=1, le=MAX_FFN)
    num_attention_heads: int = Field(ge=1, le=MAX_HEADS)
    num_query_groups: int = Field(ge=1, le=MAX_HEADS)
    vocab_size: int = Field(ge=1, le=MAX_VOCAB)
    max_position_embeddings: int = Field(ge=1, le=MAX_POSITIONS)
    rotary_base: float = Field(gt=0, le=1e12)
    norm_epsilon: float = Field(gt=0, lt=1)
    untie_embeddings: bool = True
    qkv_bias: bool = True

    @model_validator(mode="after")
    def _shapes_fit(self) -> "ModelDims":
        # Grouped-query attention shares each key/value head among heads/groups query heads,
        # and every head is hidden/heads wide: both must divide exactly.
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by num_query_groups {self.num_query_groups}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        return self

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


# HF config.json key -> (Megatron name, default when absent; None: required).
_HF_KEYS: dict[str, tuple[str, object]] = {
    "num_hidden_layers": ("num_layers", None),
    "hidden_size": ("hidden_size", None),
    "intermediate_size": ("ffn_hidden_size", None),
    "num_attention_heads": ("num_attention_heads", None),
    "vocab_size": ("vocab_size", None),
    "max_position_embeddings": ("max_position_embeddings", 32768),
    "rms_norm_eps": ("norm_epsilon", 1e-6),
}
_MEGATRON_TO_HF = {m: hf for hf, (m, _) in _HF_KEYS.items()} | {"num_query_groups": "num_key_value_heads", "rotary_base": "rope_theta", "untie_embeddings": "tie_word_embeddings"}


def _rope_theta(cfg: dict) -> object:
    # transformers 5 writes rope_theta inside rope_parameters; released Qwen2.5 configs at the top.
    if "rope_theta" in cfg:
        return cfg["rope_theta"]
    nested = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if isinstance(nested, dict) and "rope_theta" in nested:
        return nested["rope_theta"]
    return 10000.0


def _number(value: object, want_int: bool) -> object:
    """JSON numbers as the dims want them; anything else is passed on for pydantic to refuse."""
    if isinstance(value, bool):
        return value
    if want_int and isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # some writers emit 28.0
    if not want_int and isinstance(value, int):
        return float(value)
    return value


def dims_from_config_dict(cfg: dict) -> ModelDims:
    """Map HF Qwen2 config keys to Megatron's names.

    Raises ValueError with one line naming every bad key by its config.json name.
    """
    missing = [k for k, (_, default) in _HF_KEYS.items() if default is None and k not in cfg]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}: not a Qwen2-architecture config")
    values: dict[str, object] = {m: _number(cfg.get(hf, default), m not in ("norm_epsilon",)) for hf, (m, default) in _HF_KEYS.items()}
    values["num_query_groups"] = _number(cfg.get("num_key_value_heads", cfg["num_attention_heads"]), True)
    values["rotary_base"] = _number(_rope_theta(cfg), False)
    tie = cfg.get("tie_word_embeddings", False)
    values["untie_embeddings"] = (not tie) if isinstance(tie, bool) else tie
    values["qkv_bias"] = True
    try:
        return ModelDims.model_validate(values)
    except ValidationError as e:
        raise ValueError(_one_line(e, _MEGATRON_TO_HF)) from None


def _one_line(err: ValidationError, names: dict[str, str] | None = None) -> str:
    """A pydantic error as one line: `key: problem (got VALUE); key: ...`."""
    parts = []
    for e in err.errors(include_url=False):
        key = ".".join(str((names or {}).get(p, p)) if isinstance(p, str) else f"[{p}]" for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] in ("missing", "value_error") else f" (got {show(e.get('input'))})"
        parts.append(f"{key}: {msg}{got}" if key else f"{msg}{got}")
    return "; ".join(parts)


class ConfigMissing(ValueError):
    """config.json does not exist (callers add what to give instead)."""


# A Qwen2.5 config.json is about 1 KB.
MAX_CONFIG_BYTES = 1 << 20


def read_config_json(path: Path) -> dict:
    """An HF config.json (or the one inside a checkpoint directory) as a dict."""
    if path.is_dir():
        path = path / "config.json"
    try:
        raw = read_regular_file(path, MAX_CONFIG_BYTES, "an HF config.json")
    except NoSuchFile:
        raise ConfigMissing(f"{path}: no such file") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be an HF config.json") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"{path}: not a usable JSON document ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return cfg


def dims_from_hf_config(path: Path) -> ModelDims:
    try:
        cfg = read_config_json(path)
    except ConfigMissing as e:
        raise ValueError(f"{e}; give the HF checkpoint's config.json") from None
    if path.is_dir():
        path = path / "config.json"
    try:
        return dims_from_config_dict(cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
