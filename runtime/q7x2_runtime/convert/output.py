"""Atomic output directories with a checksum manifest.

Everything is written into a hidden sibling (".<name>.partial-<pid>") and renamed into place
only when complete, so an interrupted run never leaves a directory that looks finished under
the requested name. The manifest (sha256 and size of every file, computed while writing)
sits inside the directory; while the run writes, that file exists empty and the run holds its
lock (see debris.py), which is how a later run knows whether a partial directory's owner is
still alive. A rerun removes what dead runs left next to its output, and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from types import TracebackType

from q7x2_runtime import debris
from q7x2_runtime.convert.sink import fsync_file
from q7x2_runtime.errors import UserError
from q7x2_runtime.os_errors import os_error
from q7x2_runtime.durable import fsync_dir as _fsync_dir

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




def _temporaries(final: Path) -> list[tuple[str, int, Path]]:
    """(kind, pid, path) of every ".NAME.partial-PID" / ".NAME.old-PID" next to `final`."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(partial|old)-(\d+)")
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    return [(m.group(1), int(m.group(2)), final.parent / n) for n in names if (m := pattern.fullmatch(n))]


def remove_dead_temporaries(final: Path) -> list[tuple[int, Path]]:
    """Delete what dead runs writing `final` left; return (pid, path) of live runs' temporaries.

    A partial directory's owner holds the lock of the manifest inside it. An ".old-PID"
    directory is the previous output, moved aside by a --force run in the instant between
    its two renames; that run holds the lock of the new output's manifest until it has deleted
    the old one.
    """
    live = []
    for kind, pid, path in _temporaries(final):
        lock = path / MANIFEST if kind == "partial" else final / MANIFEST
        if debris.owner_dead(pid, lock if os.path.lexists(lock) else None, path):
            debris.remove(path)
        elif kind == "partial":
            live.append((pid, path))
    return live


class AtomicDir:
    """`with AtomicDir(final, force) as out:` write under out.path, record files with out.add()."""

    def __init__(self, final: Path, force: bool = False, describe: str = "output", flag: str = "--save-dir") -> None:
        self.final = final
        self.flag = flag
        self.force = force
        if os.path.lexists(final) and not force:
            raise UserError(f"{final}: {describe} already exists; pass --force to replace it")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error("create the output's parent directory", final.parent, e, flag) from None
        live = remove_dead_temporaries(final)
        if live:
            pid, path = live[0]
            raise UserError(
                f"{final}: another run (PID {pid}, perhaps in another container) is writing it now into {path}; "
                f"wait for it to finish or choose another {flag}"
            )
        self.path = final.parent / f".{final.name}.partial-{os.getpid()}"
        self._lock: debris.OwnerLock | None = None
        try:
            self.path.mkdir()
            self._lock = debris.OwnerLock(self.path / MANIFEST)
        except OSError as e:
            self._discard()
            raise os_error("create the output directory", self.path, e, flag) from None
        self.files: dict[str, dict[str, object]] = {}
        self.meta: dict[str, object] = {}

    def add(self, relpath: str, sha256: str, size: int) -> None:
        self.files[relpath] = {"sha256": sha256, "bytes": size}

    def __enter__(self) -> "AtomicDir":
        return self

    def _discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._commit()
        except BaseException:
            self._discard()
            raise
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _write_manifest(self) -> None:
        manifest = {"algorithm": "sha256", **self.meta, "files": dict(sorted(self.files.items()))}
        data = (json.dumps(manifest, indent=1) + "\n").encode()
        assert self._lock is not None
        fd = self._lock.fd  # the locked, still empty manifest file
        if fd < 0:
            raise RuntimeError("manifest lock released before commit")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            raise os_error("write", self.path / MANIFEST, e, self.flag) from None
        fsync_file(self.path / MANIFEST)

    def _commit(self) -> None:
        for rel in self.files:
            fsync_file(self.path / rel)
        self._write_manifest()
        dirs = {self.path} | {self.path / parent for f in self.files for parent in Path(f).parents if str(parent) != "."}
        for sub in dirs:
            _fsync_dir(sub)
        old = None
        if os.path.lexists(self.final):
            if not self.force:
                raise UserError(f"{self.final} appeared while this run was writing it; nothing replaced, pass --force to replace it")
            # --force: move the old one aside first, delete it only after the swap.
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, old)
        os.replace(self.path, self.final)
        _fsync_dir(self.final.parent)
        if old is not None:
            debris.remove(old)  # a file, a symlink or a directory: whatever --force replaced


def _file_problem(directory: Path, rel: str, entry: dict) -> str | None:
    import hashlib

    path = directory / rel
    try:
        size = os.stat(path).st_size
        if size != entry["bytes"]:
            return f"{rel} is {size:,} bytes, the manifest says {entry['bytes']:,}"
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(16 << 20):
                h.update(chunk)
    except OSError as e:
        return f"{rel}: {e.strerror}"
    return None if h.hexdigest() == entry["sha256"] else f"{rel} does not match its sha256"


def manifest_problem(directory: Path) -> str | None:
    """None if every file the manifest lists has its recorded size and sha256, else the first
    difference. Files are hashed two at a time (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        files = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["files"]
        items = [(str(rel), {"bytes": int(e["bytes"]), "sha256": str(e["sha256"])}) for rel, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        return f"{MANIFEST} is unreadable ({e.__class__.__name__})"
    with ThreadPoolExecutor(2) as pool:
        for problem in pool.map(lambda item: _file_problem(directory, *item), items):
            if problem:
                return problem
    return None


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
