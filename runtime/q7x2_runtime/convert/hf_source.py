"""Lazy access to an HF safetensors checkpoint: tensor slices on demand, nothing else in memory.

The shard of each tensor comes from model.safetensors.index.json's weight_map (or the single
model.safetensors); nothing assumes which layer lives in which shard. Every shard's header and
every expected tensor's shape are checked before any output is written. Only the tensors
being converted at the moment are in memory.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from q7x2_runtime.convert.mapping import Piece, hf_shapes
from q7x2_runtime.errors import UserError
from q7x2_runtime.model_dims import ConfigMissing, ModelDims, dims_from_config_dict, read_config_json
from q7x2_runtime.os_errors import present, reason, regular_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


_CONFIG_MAX_BYTES = 16 << 20  # released configs are a few KB
_INDEX_MAX_BYTES = 256 << 20  # a 7B model's index is about 30 KB

# config.json fields the conversion reads: (name, required, kind, lowest, highest). The ranges
# bound every size by what a real model could have, so no later arithmetic or allocation
# (one tensor name per layer, shapes multiplied out) runs away on a typo such as 1e9 layers.
_CONFIG_FIELDS: tuple[tuple[str, bool, type, float, float], ...] = (
    ("num_hidden_layers", True, int, 1, 1024),
    ("hidden_size", True, int, 1, 1 << 20),
    ("intermediate_size", True, int, 1, 1 << 22),
    ("num_attention_heads", True, int, 1, 4096),
    ("num_key_value_heads", False, int, 1, 4096),
    ("vocab_size", True, int, 1, 1 << 24),
    ("max_position_embeddings", False, int, 1, 1 << 24),
    ("rope_theta", False, float, 1e-6, 1e12),
    ("rms_norm_eps", False, float, 1e-30, 1.0),
)


def _field_problem(value: Any, kind: type, low: float, high: float) -> str | None:
    shown = json.dumps(value)[:40]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"is {shown}; expected an integer from {low} to {high:,}"
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return f"is {shown}; expected a number from {low:g} to {high:g}"
    if not low <= value <= high:
        return f"is {shown}; expected {'an integer' if kind is int else 'a number'} from {low:g} to {high:g}"
    return None


def config_dims(cfg: dict[str, Any], path: Path) -> ModelDims:
    """The dims of a config.json, with one line naming the file and the field for a bad value."""
    for name, required, kind, low, high in _CONFIG_FIELDS:
        if name not in cfg:
            if required:
                raise UserError(f"{path}: lacks {name}; not a Qwen2-architecture config")
            continue
        problem = _field_problem(cfg[name], kind, low, high)
        if problem:
            raise UserError(f"{path}: {name} {problem}")
    for nested in ("rope_parameters", "rope_scaling"):
        inner = cfg.get(nested)
        if isinstance(inner, dict) and "rope_theta" in inner and "rope_theta" not in cfg:
            problem = _field_problem(inner["rope_theta"], float, 1e-6, 1e12)
            if problem:
                raise UserError(f"{path}: {nested}.rope_theta {problem}")
    tie = cfg.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise UserError(f"{path}: tie_word_embeddings is {json.dumps(tie)[:40]}; expected true or false")
    heads = cfg["num_attention_heads"]
    groups = cfg.get("num_key_value_heads") or heads
    if heads % groups:
        raise UserError(f"{path}: num_attention_heads={heads} is not a multiple of num_key_value_heads={groups}")
    if cfg["hidden_size"] % heads:
        raise UserError(f"{path}: hidden_size={cfg['hidden_size']} is not a multiple of num_attention_heads={heads}")
    try:
        return dims_from_config_dict(cfg)
    except (ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError; say it in one line
        errors = getattr(e, "errors", None)
        if callable(errors):
            first = errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise UserError(f"{path}: {where}: {first.get('msg')}") from None
        raise UserError(f"{path}: {str(e).splitlines()[0]}") from None


def read_config(hf_dir: Path, what: str = "--load-dir") -> dict[str, Any]:
    path = hf_dir / "config.json"
    if not present(path, "config file"):
        raise UserError(f"{path}: no such file; {what} must be an HF checkpoint directory with config.json")
    regular_file(path, "config file", _CONFIG_MAX_BYTES)
    try:
        return read_config_json(path)
    except ConfigMissing as e:
        raise UserError(f"{e}; {what} must be an HF checkpoint directory with config.json") from None
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None


def dims_of(hf_dir: Path) -> ModelDims:
    return config_dims(read_config(hf_dir), hf_dir / "config.json")


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def _shard_problem(path: Path, size: int) -> str | None:
    """Why a readable shard cannot be a complete safetensors file, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"truncated: {size} bytes, too short for a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                return f"truncated or corrupt: the header claims {n:,} bytes, the file has {size:,}"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"cannot read: {reason(path, e)}"
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return "corrupt safetensors header (not JSON)"
    if not isinstance(header, dict):
        return "corrupt safetensors header (not a JSON object)"
    try:
        end = max((int(m["data_offsets"][1]) for k, m in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "corrupt safetensors header (bad data_offsets)"
    if 8 + n + end > size:
        return f"truncated: its tensors need {8 + n + end:,} bytes, the file has {size:,}"
    return None


_TORCH_DTYPE = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map the whole range up front, not page by page


class HFCheckpoint:
    """Reads pieces of HF tensors. Use as a context manager so shard files are closed.

    Each shard is opened once with safetensors' safe_open, which validates its header and
    length (a truncated or corrupt shard fails here, before any output exists). Tensor bytes
    are then mapped tensor by tensor at the offsets the header gives, and written out from
    that mapping with no copy in between. Reading through safe_open's handle instead would
    keep every page read mapped into this process until the handle closes (about the size of
    the model for a whole conversion) and copies each tensor out of its map first.

    A full HF tensor is read once and kept until release(), so the TP ranks' pieces of it
    all come from one read.
    """

    def __init__(self, hf_dir: Path, dims: ModelDims | None = None) -> None:
        self.dir = hf_dir
        self.dims = dims or dims_of(hf_dir)
        self.weight_map = self._weight_map()
        self._fds: dict[str, int] = {}
        self._entries: dict[str, tuple[str, torch.dtype, tuple[int, ...], int, int]] = {}
        self._cache: dict[str, torch.Tensor] = {}
        try:
            self._check()
        except BaseException:
            self.close()
            raise

    def _weight_map(self) -> dict[str, str]:
        index = self.dir / INDEX
        if present(index, "safetensors index"):
            regular_file(index, "safetensors index", _INDEX_MAX_BYTES)
            try:
                data = json.loads(index.read_text(encoding="utf-8"))
                weight_map = data["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as e:
                raise UserError(f"{index}: not a valid safetensors index ({e.__class__.__name__}: {str(e).splitlines()[0][:120]})") from None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise UserError(f"{index}: weight_map is not an object of tensor name -> shard file name")
            for shard in set(weight_map.values()):
                if "/" in shard or shard in ("", ".", ".."):
                    raise UserError(f"{index}: weight_map names shard {shard!r}, not a file name inside {self.dir}")
            return weight_map
        if present(self.dir / SINGLE, "safetensors file"):
            with self._validated(SINGLE) as f:
                return {k: SINGLE for k in f.keys()}
        raise UserError(f"{self.dir}: neither {INDEX} nor {SINGLE}; not a safetensors HF checkpoint")

    def _validated(self, shard: str) -> Any:
        """safe_open of a shard, after telling apart the ways it can be unusable."""
        path = self.dir / shard
        if not present(path, "safetensors shard"):
            raise UserError(f"{path}: shard listed in the index is missing")
        st = regular_file(path, "safetensors shard")
        problem = _shard_problem(path, st.st_size)
        if problem:
            raise UserError(f"{path}: {problem}")
        try:
            return safe_open(str(path), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise UserError(f"{path}: corrupt safetensors shard ({str(e).splitlines()[0][:160]})") from None

    def _index_shard(self, shard: str) -> None:
        """Validate a shard with safe_open, then record where each tensor's bytes are."""
        path = self.dir / shard
        with self._validated(shard) as f:
            names = set(f.keys())
        fd = os.open(path, os.O_RDONLY)
        self._fds[shard] = fd
        (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
        header = json.loads(os.pread(fd, n, 8))
        for name, meta in header.items():
            if name == "__metadata__" or name not in names:
                continue
            begin, end = meta["data_offsets"]
            dtype = _TORCH_DTYPE.get(meta["dtype"])
            if dtype is None:
                raise UserError(f"{path}: {name} has dtype {meta['dtype']}; expected a float checkpoint")
            self._entries[name] = (shard, dtype, tuple(meta["shape"]), 8 + n + begin, end - begin)

    def _check(self) -> None:
        expected = hf_shapes(self.dims)
        missing = [n for n in expected if n not in self.weight_map]
        if missing:
            raise UserError(
                f"{self.dir}: checkpoint lacks {missing[0]}"
                + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
                + "; it does not match its config.json (num_hidden_layers, tie_word_embeddings?)"
            )
        layers = {int(m.group(1)) for name in self.weight_map if (m := _LAYER.match(name))}
        extra = sorted(layers - set(range(self.dims.num_layers)))
        if extra:
            raise UserError(
                f"{self.dir / 'config.json'}: num_hidden_layers={self.dims.num_layers} but the checkpoint holds "
                f"layers up to model.layers.{extra[-1]}; converting would drop {len(extra)} layer(s): fix num_hidden_layers"
            )
        for shard in sorted(set(self.weight_map[n] for n in expected)):
            self._index_shard(shard)
        for name, shape in expected.items():
            if name not in self._entries:
                raise UserError(f"{self.dir / self.weight_map[name]}: lacks tensor {name} that the index puts there")
            got = self._entries[name][2]
            if got != shape:
                raise UserError(f"{self.dir}: {name} has shape {list(got)} but config.json implies {list(shape)}")

    def _full(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            shard, dtype, shape, offset, size = self._entries[name]
            if size == 0:
                return torch.empty(shape, dtype=dtype)
            # A read-only shared map of just this tensor, prefaulted in one go. The tensor's
            # storage keeps the map alive; when the last view is written and dropped, the map
            # is unmapped, so resident memory stays at the tensors in flight.
            skew = offset % mmap.ALLOCATIONGRANULARITY
            try:
                m = mmap.mmap(self._fds[shard], size + skew, flags=mmap.MAP_SHARED | _POPULATE,
                              prot=mmap.PROT_READ, offset=offset - skew)
            except (OSError, ValueError) as e:
                raise UserError(f"{self.dir / shard}: cannot read {name} ({e}); the shard may be truncated") from None
            with warnings.catch_warnings():
                # Read-only memory: nothing here writes to source tensors (parts are copied
                # before any change), and a writable private map would copy every page.
                warnings.simplefilter("ignore", UserWarning)
                flat = torch.frombuffer(m, dtype=torch.uint8, count=size, offset=skew)
            self._cache[name] = flat.view(dtype).view(shape)
        return self._cache[name]

    def read(self, piece: Piece) -> torch.Tensor:
        return self._full(piece.hf_name).narrow(piece.dim, piece.start, piece.stop - piece.start)

    def release(self) -> None:
        """Drop the tensors read so far (callers hold their own references while needed)."""
        self._cache.clear()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._cache.clear()

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

    def release(self) -> None:
        pass

    def read(self, piece: Piece) -> torch.Tensor:
        t = self.state[piece.hf_name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return t.narrow(piece.dim, piece.start, piece.stop - piece.start)
