"""Sequential file output that hashes as it writes and runs in a background thread.

Each output file is written front to back exactly once, so its sha256 is computed from the
bytes on their way to disk instead of by reading the file again. The writing happens on a
worker thread (hashlib, zlib.crc32 and os.write all release the GIL) so that reading and
re-arranging the next tensor overlaps with hashing and writing the previous one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Callable

from q7x2_runtime.errors import UserError

_CHUNK = 64 << 20  # bytes per os.write: large enough to amortise syscalls, bounded for partial writes


def disk_full(path: Path) -> UserError:
    return UserError(f"disk full while writing {path}; free space on that filesystem (or choose another --save-dir) and retry")


class HashedFile:
    """A write-only file that keeps a running sha256 and its own offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._sha = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        try:
            while view:
                n = os.write(self._fd, view[:_CHUNK])
                view = view[n:]
                self.offset += n
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(self.path) from None
            raise

    def close(self) -> str:
        """fsync and close; returns the hex sha256 of everything written."""
        try:
            os.fsync(self._fd)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(self.path) from None
            raise
        finally:
            os.close(self._fd)
        return self._sha.hexdigest()

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


class Worker:
    """Runs submitted jobs in order on one thread; an error surfaces on the next call.

    The queue is short so that at most a couple of tensors wait in memory.
    """

    def __init__(self, depth: int = 2) -> None:
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ckpt-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as e:  # handed back to the submitting thread
                    self._error = e

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, job: Callable[[], None]) -> None:
        self._check()
        self._q.put(job)

    def drain(self) -> None:
        """Wait until every submitted job has run; re-raise the first failure."""
        done = threading.Event()
        self._q.put(done.set)
        done.wait()
        self._check()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
