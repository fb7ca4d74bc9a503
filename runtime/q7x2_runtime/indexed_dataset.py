"""Megatron's indexed dataset (.bin + .idx): a streaming writer and a memory-mapped reader.

The layout is the one megatron-core's `indexed_dataset.py` reads (version 1, no multimodal
modes), so MindSpeed-LLM and Megatron open our files unchanged:

  .bin  every sequence's token ids, concatenated, no header
  .idx  b"MMIDIDX\\x00\\x00" | uint64 version=1 | uint8 dtype code | uint64 sequence_count
        | uint64 document_count (= documents + 1) | int32[sequences] lengths
        | int64[sequences] byte offsets into .bin | int64[document_count] document indices

Written by hand rather than imported because the runtime must not depend on megatron-core
(the CPU image does not ship it) and the format is small and frozen.
"""

from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np

from q7x2_runtime.errors import UserError

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count

# Megatron's DType codes; the numbering is part of the file format.
DTYPE_CODES: dict[type[np.generic], int] = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}
_CODE_DTYPES = {code: np.dtype(t) for t, code in DTYPE_CODES.items()}


def data_path(prefix: str | Path) -> tuple[Path, Path]:
    """The (.bin, .idx) pair Megatron opens for a data path prefix."""
    prefix = str(prefix)
    return Path(prefix + ".bin"), Path(prefix + ".idx")


class IndexedDatasetWriter:
    """Appends documents to a .bin stream and writes the .idx once, at `finalize()`.

    Memory use is 12 bytes per sequence plus 8 per document (the index arrays); token ids go
    straight to disk. Each document here is one sequence, as MindSpeed's pretraining
    handlers write them; `add_document_sequences` covers sentence-split documents.
    """

    def __init__(self, bin_path: str | Path, idx_path: str | Path, dtype: type[np.generic] = np.int32) -> None:
        self._dtype = np.dtype(dtype)
        if self._dtype.type not in DTYPE_CODES:
            raise ValueError(f"unsupported indexed dataset dtype {self._dtype}")
        self.bin_path = Path(bin_path)
        self.idx_path = Path(idx_path)
        self._bin: BinaryIO | None = open(self.bin_path, "wb")
        self._lengths = array("i")
        self._document_indices = array("q", [0])
        self.tokens = 0

    @property
    def documents(self) -> int:
        return len(self._document_indices) - 1

    def add_document(self, ids: np.ndarray | list[int]) -> None:
        """One document made of one sequence."""
        arr = np.asarray(ids, dtype=self._dtype)
        self.add_documents(arr, np.array([arr.size], dtype=np.int64))

    def add_documents(self, flat_ids: np.ndarray, lengths: np.ndarray) -> None:
        """Many one-sequence documents at once: `flat_ids` is their ids back to back."""
        lengths = np.asarray(lengths, dtype=np.int64)
        flat_ids = np.ascontiguousarray(flat_ids, dtype=self._dtype)
        if int(lengths.sum()) != flat_ids.size:
            raise ValueError("lengths do not add up to the number of ids")
        if lengths.size and int(lengths.max()) > np.iinfo(np.int32).max:
            raise ValueError("a sequence longer than 2**31-1 tokens does not fit the index")
        self._write(flat_ids)
        start = len(self._lengths)
        self._lengths.extend(lengths.astype(np.int32).tolist())
        self._document_indices.extend(range(start + 1, start + 1 + lengths.size))

    def add_document_sequences(self, sequences: list[np.ndarray | list[int]]) -> None:
        """One document made of several sequences (sentence-split data)."""
        for seq in sequences:
            arr = np.asarray(seq, dtype=self._dtype)
            self._write(arr)
            self._lengths.append(arr.size)
        self._document_indices.append(len(self._lengths))

    def _write(self, arr: np.ndarray) -> None:
        if self._bin is None:
            raise ValueError("writer already finalized")
        self._bin.write(arr.data.cast("B"))
        self.tokens += arr.size

    def finalize(self, durable: bool = True) -> None:
        """Close the .bin and write the complete .idx; with `durable`, both are fsynced, so a
        rename that publishes them never points at data still in the page cache only."""
        if self._bin is None:
            return
        self._bin.flush()
        if durable:
            os.fsync(self._bin.fileno())
        self._bin.close()
        self._bin = None
        lengths = np.frombuffer(self._lengths, dtype=np.int32) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(lengths.size, dtype=np.int64)
        if lengths.size > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self._dtype.itemsize, out=pointers[1:])
        doc_idx = np.frombuffer(self._document_indices, dtype=np.int64)
        with open(self.idx_path, "wb") as f:
            f.write(_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, DTYPE_CODES[self._dtype.type], lengths.size, doc_idx.size))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(doc_idx.tobytes())
            if durable:
                f.flush()
                os.fsync(f.fileno())

    def abort(self) -> None:
        """Close without writing the index (the caller removes the files)."""
        if self._bin is not None:
            try:
                self._bin.close()  # flushes what is buffered: fails again on a full disk
            except OSError:
                pass
            self._bin = None

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


class IndexedDataset:
    """Read-only view of `<prefix>.bin` / `<prefix>.idx`; items are numpy arrays of token ids."""

    def __init__(self, path_prefix: str | Path) -> None:
        self.bin_path, self.idx_path = data_path(path_prefix)
        for p in (self.bin_path, self.idx_path):
            if not p.is_file():
                raise UserError(f"indexed dataset file {p} does not exist")
        self._idx = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        if self._idx.size < _HEADER.size:
            raise UserError(f"{self.idx_path} is too short to be a Megatron index")
        magic, version, code, n_seq, n_doc = _HEADER.unpack(bytes(self._idx[: _HEADER.size]))
        if magic != INDEX_MAGIC or version != INDEX_VERSION:
            raise UserError(f"{self.idx_path} is not a version-1 Megatron index (bad header)")
        if code not in _CODE_DTYPES:
            raise UserError(f"{self.idx_path} has unknown dtype code {code}")
        self.dtype: np.dtype = _CODE_DTYPES[code]
        expected = _HEADER.size + n_seq * (4 + 8) + n_doc * 8
        if self._idx.size < expected:
            raise UserError(f"{self.idx_path} is truncated ({self._idx.size} bytes, header promises {expected})")
        buf = self._idx
        off = _HEADER.size
        self.sequence_lengths: np.ndarray = np.frombuffer(buf, np.int32, n_seq, off)
        off += n_seq * 4
        self.sequence_pointers: np.ndarray = np.frombuffer(buf, np.int64, n_seq, off)
        off += n_seq * 8
        self.document_indices: np.ndarray = np.frombuffer(buf, np.int64, n_doc, off)
        if n_doc == 0 or self.document_indices[-1] != n_seq:
            raise UserError(f"{self.idx_path}: document indices do not end at the sequence count")
        need = int(self.sequence_lengths.astype(np.int64).sum()) * self.dtype.itemsize
        self._bin = np.memmap(self.bin_path, mode="r", dtype=np.uint8) if need else np.zeros(0, np.uint8)
        if self._bin.size != need:
            raise UserError(f"{self.bin_path} holds {self._bin.size} bytes, the index describes {need}")

    def __len__(self) -> int:
        return int(self.sequence_lengths.size)

    @property
    def num_documents(self) -> int:
        return int(self.document_indices.size - 1)

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens `offset:offset+length` of sequence `idx` (a read-only view, no copy)."""
        n = int(self.sequence_lengths[idx])
        if length is None:
            length = n - offset
        if offset < 0 or length < 0 or offset + length > n:
            raise IndexError(f"slice {offset}:{offset + length} outside sequence {idx} of length {n}")
        start = int(self.sequence_pointers[idx]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin, self.dtype, length, start)

    @overload
    def __getitem__(self, idx: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, idx: slice) -> list[np.ndarray]: ...

    def __getitem__(self, idx: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(idx, slice):
            return [self.get(i) for i in range(*idx.indices(len(self)))]
        if not -len(self) <= idx < len(self):
            raise IndexError(f"sequence {idx} out of range for {len(self)} sequences")
        return self.get(idx % len(self))

    def document(self, doc: int) -> list[np.ndarray]:
        """The sequences making up document `doc`."""
        lo, hi = int(self.document_indices[doc]), int(self.document_indices[doc + 1])
        return [self.get(i) for i in range(lo, hi)]
