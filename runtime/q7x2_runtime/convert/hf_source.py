"""Lazy access to an HF safetensors checkpoint: tensor slices on demand, nothing else in memory.

The shard of each tensor comes from model.safetensors.index.json's weight_map (or the single
model.safetensors); nothing assumes which layer lives in which shard. Every shard's header and
every expected tensor's shape are checked before any output is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from q7x2_runtime.convert.mapping import Piece, hf_shapes
from q7x2_runtime.errors import UserError
from q7x2_runtime.model_dims import ModelDims, dims_from_config_dict

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; --load-dir must be an HF checkpoint directory with config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object")
    return cfg


def normalized_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Config keys as model_dims expects them: transformers 5 writes rope_theta inside
    rope_parameters instead of at the top level (real Qwen2.5 checkpoints use the top level)."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if "rope_theta" not in cfg and isinstance(rope, dict) and "rope_theta" in rope:
        cfg = {**cfg, "rope_theta": rope["rope_theta"]}
    return cfg


def dims_of(hf_dir: Path) -> ModelDims:
    try:
        return dims_from_config_dict(normalized_config(read_config(hf_dir)))
    except ValueError as e:
        raise UserError(f"{hf_dir / 'config.json'}: {e}") from None


class HFCheckpoint:
    """Reads pieces of HF tensors. Use as a context manager so shard handles are closed."""

    def __init__(self, hf_dir: Path, dims: ModelDims | None = None) -> None:
        self.dir = hf_dir
        self.dims = dims or dims_of(hf_dir)
        self.weight_map = self._weight_map()
        self._handles: dict[str, Any] = {}
        self._slices: dict[str, Any] = {}
        self._check()

    def _weight_map(self) -> dict[str, str]:
        index = self.dir / INDEX
        if index.exists():
            try:
                data = json.loads(index.read_text(encoding="utf-8"))
                weight_map = data["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{index}: not a valid safetensors index ({e.__class__.__name__}: {e})") from None
            if not isinstance(weight_map, dict):
                raise UserError(f"{index}: weight_map is not an object")
            return weight_map
        if (self.dir / SINGLE).exists():
            with self._open_shard(SINGLE) as f:
                return {k: SINGLE for k in f.keys()}
        raise UserError(f"{self.dir}: neither {INDEX} nor {SINGLE}; not a safetensors HF checkpoint")

    def _open_shard(self, shard: str) -> Any:
        path = self.dir / shard
        if not path.exists():
            raise UserError(f"{path}: shard listed in the index is missing")
        try:
            return safe_open(str(path), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types for bad headers and truncation
            raise UserError(f"{path}: corrupt or truncated safetensors shard ({str(e).splitlines()[0][:160]})") from None

    def _slice(self, name: str) -> Any:
        if name not in self._slices:
            shard = self.weight_map[name]
            if shard not in self._handles:
                self._handles[shard] = self._open_shard(shard).__enter__()
            try:
                self._slices[name] = self._handles[shard].get_slice(name)
            except Exception:
                raise UserError(f"{self.dir / shard}: lacks tensor {name} that the index puts there") from None
        return self._slices[name]

    def _check(self) -> None:
        expected = hf_shapes(self.dims)
        missing = [n for n in expected if n not in self.weight_map]
        if missing:
            raise UserError(
                f"{self.dir}: checkpoint lacks {missing[0]}"
                + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
                + "; it does not match its config.json (num_hidden_layers, tie_word_embeddings?)"
            )
        for shard in sorted(set(self.weight_map[n] for n in expected)):
            self._handles[shard] = self._open_shard(shard).__enter__()
        for name, shape in expected.items():
            got = tuple(self._slice(name).get_shape())
            if got != shape:
                raise UserError(f"{self.dir}: {name} has shape {list(got)} but config.json implies {list(shape)}")
            dtype = self._slice(name).get_dtype()
            if dtype not in ("BF16", "F16", "F32"):
                raise UserError(f"{self.dir}: {name} has dtype {dtype}; expected a float checkpoint")
        self._slices.clear()  # slice handles are cheap to re-create; don't keep one per tensor

    def read(self, piece: Piece) -> torch.Tensor:
        sl = self._slice(piece.hf_name)
        try:
            if piece.dim == 0:
                return sl[piece.start : piece.stop]
            return sl[:, piece.start : piece.stop]
        except Exception as e:
            raise UserError(f"{self.dir / self.weight_map[piece.hf_name]}: cannot read {piece.hf_name} ({e})") from None

    def forget(self, hf_name: str) -> None:
        self._slices.pop(hf_name, None)

    def close(self) -> None:
        for h in self._handles.values():
            h.__exit__(None, None, None)
        self._handles.clear()
        self._slices.clear()

    def __enter__(self) -> "HFCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DictSource:
    """The same piece reader over tensors already in memory (the Python API's save path)."""

    def __init__(self, state: dict[str, torch.Tensor], dims: ModelDims) -> None:
        expected = hf_shapes(dims)
        for name, shape in expected.items():
            if name not in state:
                raise UserError(f"state dict lacks {name}")
            if tuple(state[name].shape) != shape:
                raise UserError(f"state dict {name} has shape {list(state[name].shape)}, dims imply {list(shape)}")
        self.state = state

    def read(self, piece: Piece) -> torch.Tensor:
        t = self.state[piece.hf_name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return t.narrow(piece.dim, piece.start, piece.stop - piece.start)
