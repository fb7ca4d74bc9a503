"""Copies that are never seen half done: write under a temporary name, fsync, rename, fsync the
directory. A reader (or a crash) sees either no file or the whole file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TMP_MARK = ".q7x2-tmp-"
_CHUNK = 8 << 20


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # some filesystems do not open directories; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_name(dest: Path) -> Path:
    return dest.with_name(f"{dest.name}{TMP_MARK}{os.getpid()}")


def copy_file_atomic(src: Path, dest: Path) -> int:
    """Copy src to dest atomically; returns the bytes copied. Parents of dest are created."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(dest)
    try:
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            shutil.copyfileobj(fi, fo, _CHUNK)
            fo.flush()
            os.fsync(fo.fileno())
            size = fo.tell()
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return size


def write_text_atomic(dest: Path, text: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(dest)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def remove_leftovers(root: Path) -> None:
    """Temporary files of copies a crash interrupted (any process's), under root."""
    if not root.is_dir():
        return
    for p in root.rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
