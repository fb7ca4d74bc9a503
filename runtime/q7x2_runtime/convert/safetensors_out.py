"""Write safetensors files tensor by tensor.

safetensors' own save_file needs the whole shard in memory and then the file would have to
be read back to checksum it. The format is simple (8-byte little-endian header length, a JSON
header with dtype/shape/data_offsets, then the raw bytes in order), so the header is written
first from the known shapes and the tensors are streamed after it through the hashing sink.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from q7x2_runtime.convert.sink import HashedFile, HashedWriter, Worker
from q7x2_runtime.convert.torch_zip import tensor_bytes

ST_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


class SafetensorsWriter(HashedWriter):
    def __init__(self, path: Path, entries: list[tuple[str, tuple[int, ...], torch.dtype]], worker: Worker | None = None) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        self._order = []
        for name, shape, dtype in entries:
            n = torch.empty((), dtype=dtype).element_size()
            for d in shape:
                n *= d
            header[name] = {"dtype": ST_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            self._order.append((name, tuple(shape), dtype))
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)  # the format pads the header to 8 bytes with spaces
        self.data_bytes = offset
        self._file = HashedFile(path, worker)
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor | list[torch.Tensor]) -> None:
        """Write the next tensor: whole, or as contiguous parts that concatenate to it."""
        parts = [tensor] if isinstance(tensor, torch.Tensor) else tensor
        want_name, shape, dtype = self._order[self._next]
        size = sum(p.numel() for p in parts)
        if name != want_name or size != torch.Size(shape).numel() or any(p.dtype != dtype for p in parts):
            raise RuntimeError(f"out of order or mismatched tensor {name}; expected {want_name}")
        self._next += 1
        for p in parts:
            self._file.write(tensor_bytes(p.contiguous()))

    def finish(self) -> None:
        """Close the file; with a worker, `sha256` is set once the worker is drained."""
        if self._next != len(self._order):
            raise RuntimeError("not every tensor was written")
        self._file.close()

