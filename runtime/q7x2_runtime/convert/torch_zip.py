"""Write a torch.save-compatible file one tensor at a time.

torch.save needs every tensor in memory at once; a rank file of a large model does not have
to be. This writes the same container torch.save does (a stored, uncompressed zip with
<archive>/data.pkl, byteorder, data/<key> per storage, version), so torch.load of any version
since 1.6, including 2.1.0 in the training image, reads it. The pickle is produced by Python's
own pickler with torch's persistent-id scheme, so it is what torch.save would write; tensor
bytes go out as soon as each tensor is built. Records are 64-byte aligned like torch.save's,
which torch.load(mmap=True) relies on.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsIndex

import torch

from q7x2_runtime.convert.sink import HashedFile, HashedWriter, Worker

_ALIGN = 64
_U32 = 0xFFFFFFFF
_STORAGE_CLASS = {torch.bfloat16: "BFloat16Storage", torch.float16: "HalfStorage", torch.float32: "FloatStorage"}


class _StorageRef:
    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


@dataclass(eq=False)
class TensorSlot:
    """Stands in for a tensor in the object being pickled; its bytes are written later."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        numel = 1
        for n in self.shape:
            numel *= n
        stride, acc = [], 1
        for n in reversed(self.shape):
            stride.append(acc)
            acc *= n
        storage = _StorageRef(self.key, self.dtype, numel)
        # The same call torch.Tensor.__reduce_ex__ produces for a plain CPU tensor.
        return (
            torch._utils._rebuild_tensor_v2,
            (storage, 0, tuple(self.shape), tuple(reversed(stride)), False, collections.OrderedDict()),
        )

    @property
    def nbytes(self) -> int:
        n = torch.empty((), dtype=self.dtype).element_size()
        for d in self.shape:
            n *= d
        return n


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            storage_type = getattr(torch, _STORAGE_CLASS[obj.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous tensor, without copying."""
    if not t.is_contiguous():
        raise ValueError("tensor parts must be contiguous")
    return t.reshape(-1).view(torch.uint8).numpy().data


def crc32(chunks: list) -> int:
    crc = 0
    for c in chunks:
        crc = zlib.crc32(c if isinstance(c, (bytes, memoryview)) else tensor_bytes(c), crc)
    return crc


# torch.save stamps every record with DOS time 0 and date 0 (zipfile shows 1980-00-00 00:00:00)
# so that the same tensors give the same bytes; so do we.
_DOS_TIME_DATE = (0, 0)


def serialization_id(entries: list[tuple[bytes, int, int, int]]) -> bytes:
    """The 40-digit `.data/serialization_id` torch.save writes, derived (as torch derives
    its own from the records' CRCs and names) from the records written so far, not drawn at
    random: the same checkpoint gives the same file."""
    h = hashlib.sha256()
    for fname, crc, size, _offset in entries:
        h.update(struct.pack("<IQH", crc, size, len(fname)) + fname)
    digest = h.digest()
    return (str(int.from_bytes(digest[:8], "big")).zfill(20) + str(int.from_bytes(digest[8:16], "big")).zfill(20)).encode()


class TorchZipWriter(HashedWriter):
    """Usage: slots = [w.slot(shape, dtype) ...]; w.begin(obj); w.write_tensor(slot, t) in slot
    order; w.finish(); then w.sha256."""

    def __init__(self, path: Path, worker: Worker | None = None) -> None:
        self._file = HashedFile(path, worker)
        self._archive = path.stem  # torch.save names the archive after the file, as here
        self._entries: list[tuple[bytes, int, int, int]] = []  # name, crc, size, header offset
        self._slots: list[TensorSlot] = []
        self._next = 0
        self._time = _DOS_TIME_DATE

    def slot(self, shape: tuple[int, ...], dtype: torch.dtype) -> TensorSlot:
        s = TensorSlot(str(len(self._slots)), tuple(shape), dtype)
        self._slots.append(s)
        return s

    def begin(self, obj: Any) -> None:
        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump(obj)  # torch.save's default protocol
        self._record("data.pkl", buf.getvalue())
        self._record("byteorder", sys.byteorder.encode())

    def write_tensor(self, slot: TensorSlot, tensor: torch.Tensor | list[torch.Tensor], crc: int | None = None) -> None:
        """Write a slot's bytes: one tensor, or contiguous parts that concatenate to it.
        `crc` (zlib.crc32 of all the bytes) may be computed by the caller on another thread."""
        if slot is not self._slots[self._next]:
            raise RuntimeError("tensors must be written in slot order")
        parts = [tensor] if isinstance(tensor, torch.Tensor) else tensor
        views = [tensor_bytes(p) for p in parts]
        size = sum(v.nbytes for v in views)
        if any(p.dtype != slot.dtype for p in parts) or size != slot.nbytes:
            raise RuntimeError(f"{size} bytes of {parts[0].dtype} do not fill slot {slot.shape} {slot.dtype}")
        self._next += 1
        self._record(f"data/{slot.key}", views, crc)

    def finish(self) -> None:
        """Write the trailing records and the zip directory and close the file. With a
        worker, the file is complete (and `sha256` set) once the worker is drained."""
        if self._next != len(self._slots):
            raise RuntimeError(f"{len(self._slots) - self._next} tensors were never written")
        self._record("version", b"3\n")
        self._record(".data/serialization_id", serialization_id(self._entries))
        self._central_directory()
        self._file.close()


    # -- zip format (PKWARE APPNOTE 6.3), stored entries, zip64 where sizes demand it --

    def _record(self, name: str, data: bytes | list[memoryview], crc: int | None = None) -> None:
        fname = f"{self._archive}/{name}".encode()
        chunks = [data] if isinstance(data, bytes) else data
        size = sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)
        if crc is None:
            crc = crc32(chunks)
        offset = self._file.offset
        zip64 = size >= _U32
        extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        # Pad with an extra field so the data starts on a 64-byte boundary, as torch.save does.
        base = offset + 30 + len(fname) + len(extra) + 4
        pad = (-base) % _ALIGN
        extra += struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        t, d = self._time
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, 0, 0, t, d, crc,
            _U32 if zip64 else size, _U32 if zip64 else size, len(fname), len(extra),
        )
        self._file.write(header + fname + extra)
        for chunk in chunks:
            self._file.write(chunk)
        self._entries.append((fname, crc, size, offset))

    def _central_directory(self) -> None:
        start = self._file.offset
        t, d = self._time
        out = bytearray()
        for fname, crc, size, offset in self._entries:
            fields = []
            if size >= _U32:
                fields += [size, size]
            if offset >= _U32:
                fields.append(offset)
            extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            need = 45 if fields else 20
            out += struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, need, need, 0, 0, t, d, crc,
                _U32 if size >= _U32 else size, _U32 if size >= _U32 else size,
                len(fname), len(extra), 0, 0, 0, 0, _U32 if offset >= _U32 else offset,
            )
            out += fname + extra
        self._file.write(bytes(out))
        end = self._file.offset
        count, cd_size = len(self._entries), end - start
        if start >= _U32 or count >= 0xFFFF:
            out = bytearray(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, start))
            out += struct.pack("<IIQI", 0x07064B50, 0, end, 1)
            self._file.write(bytes(out))
        self._file.write(struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
            min(cd_size, _U32), min(start, _U32), 0,
        ))
