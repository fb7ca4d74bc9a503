"""Read a torch.save file lazily: the pickled object, with tensors mapped on demand.

Used for Megatron rank files (ours or MindSpeed-LLM's) instead of torch.load because:
- each tensor is mapped and prefaulted in one call only when needed, and unmapped when its
  last view is dropped, so memory stays at the tensors in flight (torch.load(mmap=True) maps
  the whole file and faults it in page by page);
- the stored args may reference classes from packages not installed here (megatron,
  mindspeed); those are replaced by inert stand-ins instead of failing the whole load.
Like torch.load(weights_only=False) this runs the file's pickle, so use it on trusted files only.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# torch.save names a tensor's storage by its legacy typed-storage class.
_STORAGE_DTYPES = {
    "BFloat16Storage": torch.bfloat16,
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype


class LazyTensor:
    """A tensor in the file, not yet read. `load()` maps it (read-only)."""

    def __init__(self, reader: "TorchFileReader", storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self._reader, self.storage, self.offset = reader, storage, offset
        self.shape, self.stride = torch.Size(size), tuple(stride)
        self.dtype = storage.dtype

    def load(self) -> torch.Tensor:
        return self._reader.tensor(self)


class _Stand_in:
    """Replaces a pickled class that cannot be imported here; keeps whatever state it had."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None, *rest: Any) -> Any:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, reader: "TorchFileReader") -> None:
        super().__init__(io.BytesIO(data))
        self._reader = reader

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stand_in,), {"__module__": module})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        return _StorageRef(str(key), _STORAGE_DTYPES.get(getattr(storage_type, "__name__", ""), torch.uint8))

    def _rebuild_tensor(self, storage: _StorageRef, offset: int, size: Any, stride: Any, *rest: Any) -> LazyTensor:
        return LazyTensor(self._reader, storage, offset, tuple(size), tuple(stride))


class TorchFileReader:
    """Opens a torch.save zip file; `obj` is its content with LazyTensor in place of tensors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._fd = os.open(path, os.O_RDONLY)
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
                if not infos:
                    raise zipfile.BadZipFile("empty archive")
                prefix = infos[0].filename.split("/", 1)[0] + "/"
                self._records: dict[str, tuple[int, int]] = {}
                for info in infos:
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise zipfile.BadZipFile(f"{info.filename} is compressed")
                    # Data starts after the local header, whose name/extra lengths may differ
                    # from the central directory's.
                    name_len, extra_len = struct.unpack("<HH", os.pread(self._fd, 4, info.header_offset + 26))
                    self._records[info.filename] = (info.header_offset + 30 + name_len + extra_len, info.file_size)
                size = os.fstat(self._fd).st_size
                for name, (start, length) in self._records.items():
                    # Mapping bytes past the end of the file would kill the process with SIGBUS.
                    if start + length > size:
                        raise zipfile.BadZipFile(f"record {name} reaches past the end of the file (truncated?)")
                data = z.read(prefix + "data.pkl")
            self._prefix = prefix
            self.obj = _Unpickler(data, self).load()
        except BaseException:
            self.close()
            raise

    def tensor(self, ref: LazyTensor) -> torch.Tensor:
        start, size = self._records[f"{self._prefix}data/{ref.storage.key}"]
        elem = torch.empty((), dtype=ref.dtype).element_size()
        numel = ref.shape.numel()
        if numel == 0:
            return torch.empty(ref.shape, dtype=ref.dtype)
        extent = (1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))) * elem
        begin = start + ref.offset * elem
        if ref.offset * elem + extent > size:
            raise ValueError(f"tensor {ref.storage.key} reaches past its record")
        skew = begin % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(self._fd, extent + skew, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ, offset=begin - skew)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memory: callers copy before changing
            flat = torch.frombuffer(m, dtype=torch.uint8, count=extent, offset=skew).view(ref.dtype)
        return flat.as_strided(ref.shape, ref.stride)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()
