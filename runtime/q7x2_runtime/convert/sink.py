"""Sequential file output that hashes as it writes and runs in a background thread.

Each output file is written front to back exactly once, so its sha256 is computed from the
bytes on their way to disk instead of by reading the file again. The writing happens on a
worker thread (hashlib, zlib.crc32 and os.write all release the GIL) so that reading and
re-arranging the next tensor overlaps with hashing and writing the previous one.
"""

from __future__ import annotations

import errno
import functools
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
    """A write-only file that keeps a running sha256 and its own offset.

    With a worker, the caller's thread hashes and the worker thread does the os.write calls
    (in submission order), so hashing one tensor overlaps with writing the previous one.
    Call worker.drain() before relying on the file being complete.
    """

    def __init__(self, path: Path, worker: "Worker | None" = None) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._sha = hashlib.sha256()
        self._worker = worker
        self.offset = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self.offset += view.nbytes
        if self._worker is None:
            self._write_all(view)
        else:
            self._worker.submit(functools.partial(self._write_all, view), view.nbytes)

    def _write_all(self, view: memoryview) -> None:
        try:
            while view:
                n = os.write(self._fd, view[:_CHUNK])
                view = view[n:]
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(self.path) from None
            raise

    def _sync_close(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(self.path) from None
            raise
        finally:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> str:
        """fsync and close (on the worker, if any); returns the hex sha256 of everything written."""
        if self._worker is None:
            self._sync_close()
        else:
            self._worker.submit(self._sync_close)
        return self._sha.hexdigest()

    def abort(self) -> None:
        def close_quietly() -> None:
            if self._fd >= 0:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
                self._fd = -1

        if self._worker is None:
            close_quietly()
        else:
            self._worker.submit_cleanup(close_quietly)


class Worker:
    """Runs submitted jobs in order on one thread; an error surfaces on the next call.

    Submitting blocks while the jobs waiting hold more than `max_bytes` of tensors, so memory
    stays bounded however far reading runs ahead of writing.
    """

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._max = max_bytes
        self._pending = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ckpt-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            job, nbytes, always = item
            item = None
            if self._error is None or always:
                try:
                    job()
                except BaseException as e:  # handed back to the submitting thread
                    self._error = e
            job = None  # drop the tensor the job held before waiting for the next one
            with self._cond:
                self._pending -= nbytes
                self._cond.notify_all()

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, job: Callable[[], None], nbytes: int = 0) -> None:
        self._check()
        with self._cond:
            while self._pending and self._pending + nbytes > self._max and self._error is None:
                self._cond.wait()
            self._pending += nbytes
        self._check()
        self._q.put((job, nbytes, False))

    def submit_cleanup(self, job: Callable[[], None]) -> None:
        """Queue a job that runs even after a failure (closing files); never raises."""
        self._q.put((job, 0, True))

    def drain(self) -> None:
        """Wait until every submitted job has run; re-raise the first failure."""
        done = threading.Event()
        self._q.put((done.set, 0, True))
        done.wait()
        self._check()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
