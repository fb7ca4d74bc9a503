"""Atomic output: write hidden temp files, rename them into place only when all succeeded.

A reader treats `<name>.idx` as the mark of a complete dataset, so the commit order is:
fsync every temp file, remove any old .idx, move the new .bin files and the manifest into
place, then the .idx files last, then fsync the directory. A crash at any point leaves either
the old set without its index, or a complete new one; never a partial .bin/.idx pair that
looks complete.

Temp files are named ".<name>.bin.tmp-<pid>", ".<name>.idx.tmp-<pid>" and
".<prefix>_manifest.json.tmp-<pid>". Each .idx temp file is created (and its flock taken, see
debris.py) before its .bin and renamed last, so while a run lives every one of its temp files
has a locked .idx temp file beside it. A new run removes the temp files of runs whose .idx
temp files are all unlocked, or which have none left (a run that died mid-commit), and no others.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from q7x2_runtime import debris
from q7x2_runtime.errors import UserError
from q7x2_runtime.indexed_dataset import IndexedDatasetWriter
from q7x2_runtime.os_errors import is_environmental, os_error
from q7x2_runtime.durable import fsync_dir as _fsync_dir

FLAG = "--output-prefix"


def output_prefix(prefix: str, key: str) -> str:
    """MindSpeed's naming: <prefix>_<key>_document (the training DATA_PATH)."""
    return f"{prefix}_{key}_document"


def manifest_path(prefix: str) -> Path:
    return Path(f"{prefix}_manifest.json")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




def remove_dead_temporaries(finals: list[Path]) -> list[int]:
    """Delete temp files that dead runs left for these final names; the PIDs of live runs."""
    if not finals:
        return []
    parent = finals[0].parent
    names = "|".join(re.escape(f.name) for f in finals)
    pattern = re.compile(rf"\.({names})\.tmp-(\d+)")
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    by_pid: dict[int, list[Path]] = defaultdict(list)
    for name in entries:
        if m := pattern.fullmatch(name):
            by_pid[int(m.group(2))].append(parent / name)
    live = []
    for pid, paths in sorted(by_pid.items()):
        locks = [p for p in paths if p.name.endswith(f".idx.tmp-{pid}")]
        if locks:
            dead = all(debris.owner_dead(pid, lock, lock) for lock in locks)
        else:
            dead = True  # no .idx temp left: its owner died between creating files or mid-commit
        if dead:
            for p in paths:
                debris.remove(p)
        else:
            live.append(pid)
    return live


class OutputSet:
    """One indexed dataset per json key, written to temp files until `commit`."""

    def __init__(self, prefix: str, keys: list[str]) -> None:
        self.prefix = prefix
        parent = Path(prefix).parent
        self._moves: list[tuple[Path, Path]] = []  # (temp, final), .bin/.manifest before .idx
        self._locks: list[debris.OwnerLock] = []
        self.writers: dict[str, IndexedDatasetWriter] = {}
        self._committed = False
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error("create output directory", parent, e, FLAG) from None
        tag = f".tmp-{os.getpid()}"
        man = manifest_path(prefix)
        self._manifest_tmp = man.parent / f".{man.name}{tag}"
        finals = [Path(output_prefix(prefix, key) + ext) for key in keys for ext in (".bin", ".idx")] + [man]
        live = remove_dead_temporaries(finals)
        if live:
            raise UserError(
                f"another preprocess run (PID {live[0]}, perhaps in another container) is writing {prefix}_* now; "
                f"wait for it to finish or choose another {FLAG}"
            )
        bins, idxs = [], []
        for key in keys:
            final = Path(output_prefix(prefix, key))
            tmp_bin = final.parent / f".{final.name}.bin{tag}"
            tmp_idx = final.parent / f".{final.name}.idx{tag}"
            bins.append((tmp_bin, final.with_name(final.name + ".bin")))
            idxs.append((tmp_idx, final.with_name(final.name + ".idx")))
            self._moves = bins + idxs
            try:
                self._locks.append(debris.OwnerLock(tmp_idx))  # before the .bin: see the module doc
                self.writers[key] = IndexedDatasetWriter(tmp_bin, tmp_idx, dtype=np.int32)
            except OSError as e:
                self.abort()
                raise os_error("create", e.filename or tmp_bin, e, FLAG) if is_environmental(e) else e from None
        self._moves = bins + [(self._manifest_tmp, man)] + idxs

    def add(self, key: str, flat_ids: np.ndarray, lengths: np.ndarray) -> None:
        writer = self.writers[key]
        try:
            writer.add_documents(flat_ids, lengths)
        except OSError as e:
            raise os_error("write", writer.bin_path, e, FLAG) if is_environmental(e) else e from None

    def commit(self, manifest: dict[str, Any]) -> None:
        step, path = "write", self._manifest_tmp
        try:
            for w in self.writers.values():
                path = w.bin_path
                w.finalize()  # fsyncs .bin and .idx
            path = self._manifest_tmp
            self._manifest_tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
            _fsync(self._manifest_tmp)
            step = "replace"
            for _, final in self._moves:
                if final.suffix == ".idx":
                    path = final
                    final.unlink(missing_ok=True)
            for tmp, final in self._moves:
                path = final
                os.replace(tmp, final)
            path = Path(self.prefix).parent
            _fsync_dir(path)
        except OSError as e:
            raise os_error(step, path, e, FLAG) if is_environmental(e) else e from None
        self._committed = True
        self._release()

    def _release(self) -> None:
        for lock in self._locks:
            lock.release()
        self._locks = []

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()
        for tmp, _ in self._moves:
            tmp.unlink(missing_ok=True)
        self._manifest_tmp.unlink(missing_ok=True)
        for w in self.writers.values():
            for p in (w.bin_path, w.idx_path):
                p.unlink(missing_ok=True)
        self._release()

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self.abort()
