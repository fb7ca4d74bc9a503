"""Atomic output: write hidden temp files, rename them into place only when all succeeded.

A reader treats `<name>.idx` as the mark of a complete dataset, so the commit order is:
remove any old .idx, move the new .bin files and the manifest into place, then the .idx
files last. A crash at any point leaves either the old set without its index, or a
complete new one; never a partial .bin/.idx pair that looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from q7x2_runtime.errors import UserError
from q7x2_runtime.indexed_dataset import IndexedDatasetWriter


def output_prefix(prefix: str, key: str) -> str:
    """MindSpeed's naming: <prefix>_<key>_document (the training DATA_PATH)."""
    return f"{prefix}_{key}_document"


def manifest_path(prefix: str) -> Path:
    return Path(f"{prefix}_manifest.json")


class OutputSet:
    """One indexed dataset per json key, written to temp files until `commit`."""

    def __init__(self, prefix: str, keys: list[str]) -> None:
        self.prefix = prefix
        parent = Path(prefix).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create output directory {parent}: {e.strerror}") from None
        tag = f".tmp-{os.getpid()}"
        self._moves: list[tuple[Path, Path]] = []  # (temp, final), .bin/.manifest before .idx
        self.writers: dict[str, IndexedDatasetWriter] = {}
        bins, idxs = [], []
        for key in keys:
            final = Path(output_prefix(prefix, key))
            tmp_bin = final.parent / f".{final.name}.bin{tag}"
            tmp_idx = final.parent / f".{final.name}.idx{tag}"
            bins.append((tmp_bin, final.with_name(final.name + ".bin")))
            idxs.append((tmp_idx, final.with_name(final.name + ".idx")))
            try:
                self.writers[key] = IndexedDatasetWriter(tmp_bin, tmp_idx, dtype=np.int32)
            except OSError as e:
                self.abort()
                raise UserError(f"cannot write {tmp_bin}: {e.strerror}") from None
        man = manifest_path(prefix)
        self._manifest_tmp = man.parent / f".{man.name}{tag}"
        self._moves = bins + [(self._manifest_tmp, man)] + idxs
        self._committed = False

    def commit(self, manifest: dict[str, Any]) -> None:
        for w in self.writers.values():
            w.finalize()
        self._manifest_tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        for _, final in self._moves:
            if final.suffix == ".idx":
                final.unlink(missing_ok=True)
        for tmp, final in self._moves:
            os.replace(tmp, final)
        self._committed = True

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()
        for tmp, _ in self._moves:
            tmp.unlink(missing_ok=True)
        for w in self.writers.values():
            for p in (w.bin_path, w.idx_path):
                p.unlink(missing_ok=True)

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self.abort()
