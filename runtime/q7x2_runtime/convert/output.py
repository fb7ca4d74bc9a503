"""Atomic output directories with a checksum manifest.

Everything is written into a hidden sibling (".<name>.partial-<pid>") and renamed into place
only when complete, so an interrupted run never leaves a directory that looks finished under
the requested name. The manifest (sha256 and size of every file, computed while writing)
sits inside the directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType

from q7x2_runtime.convert.sink import fsync_file
from q7x2_runtime.errors import UserError

MANIFEST = "q7x2-checksums.json"


def check_free_space(target: Path, needed: int) -> None:
    """Fail before writing anything when the output cannot fit."""
    probe = target
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise UserError(
            f"not enough disk space for {target}: needs {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicDir:
    """`with AtomicDir(final, force) as out:` write under out.path, record files with out.add()."""

    def __init__(self, final: Path, force: bool = False, describe: str = "output") -> None:
        self.final = final
        if final.exists() and not force:
            raise UserError(f"{final}: {describe} already exists; pass --force to replace it")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {final.parent}: {e.strerror}") from None
        self.path = final.parent / f".{final.name}.partial-{os.getpid()}"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()
        self.files: dict[str, dict[str, object]] = {}
        self.meta: dict[str, object] = {}

    def add(self, relpath: str, sha256: str, size: int) -> None:
        self.files[relpath] = {"sha256": sha256, "bytes": size}

    def __enter__(self) -> "AtomicDir":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            self._commit()
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def _commit(self) -> None:
        for rel in self.files:
            fsync_file(self.path / rel)
        manifest = {"algorithm": "sha256", **self.meta, "files": dict(sorted(self.files.items()))}
        (self.path / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        fsync_file(self.path / MANIFEST)
        dirs = {self.path} | {self.path / parent for f in self.files for parent in Path(f).parents if str(parent) != "."}
        for sub in dirs:
            _fsync_dir(sub)
        old = None
        if self.final.exists():  # --force: move the old one aside first, delete only after the swap
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, old)
        os.replace(self.path, self.final)
        _fsync_dir(self.final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def verify_manifest(directory: Path) -> list[str]:
    """Re-hash every file listed in the manifest; returns the relative paths that differ."""
    import hashlib

    data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    bad = []
    for rel, entry in data["files"].items():
        h = hashlib.sha256()
        with open(directory / rel, "rb") as f:
            while chunk := f.read(16 << 20):
                h.update(chunk)
        if h.hexdigest() != entry["sha256"]:
            bad.append(rel)
    return bad
