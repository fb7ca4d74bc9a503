"""Sequential file output that hashes as it writes, in background threads.

Each output file is written front to back exactly once, so its sha256 is computed from the
bytes on their way to disk instead of by reading the file again. Hashing and writing run on
two worker threads (hashlib, zlib.crc32 and os.write all release the GIL) so that preparing
the next tensor, hashing the previous one and writing the one before overlap.
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
from q7x2_runtime.os_errors import out_of_inodes, is_environmental, os_error

_CHUNK = 64 << 20  # bytes per os.write: large enough to amortise syscalls, bounded for partial writes


def fsync_file(path: Path) -> None:
    """Make a finished file durable; a full disk surfaces as one clear error."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None


def disk_full(path: Path) -> UserError:
    return UserError(f"disk full while writing {path}; free space on that filesystem (or choose another --save-dir) and retry")


def write_error(path: Path, e: OSError) -> BaseException:
    """The one-line error for a failed write of an output file (the OSError itself if it is a bug)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and not out_of_inodes(path):
        return disk_full(path)
    if is_environmental(e):
        return os_error("write", path, e, "--save-dir")
    return e


class HashedFile:
    """A write-only file that keeps a running sha256 and its own offset.

    Without a worker everything happens on the calling thread. With one, the worker's hashing
    thread updates the sha256 and its writing thread does the os.write calls, both in
    submission order, so three cores' worth of work (preparing the next tensor, hashing,
    writing) overlap. After close() and worker.drain(), `sha256` holds the file's digest.
    """

    def __init__(self, path: Path, worker: "Worker | None" = None) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise os_error("create", path, e, "--save-dir") if is_environmental(e) else e from None
        self._sha = hashlib.sha256()
        self._worker = worker
        self.offset = 0
        self.sha256: str | None = None

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.offset += view.nbytes
        if self._worker is None:
            self._sha.update(view)
            self._write_all(view)
        else:
            self._worker.submit(functools.partial(self._sha.update, view), functools.partial(self._write_all, view), view.nbytes)

    def _write_all(self, view: memoryview) -> None:
        try:
            while view:
                n = os.write(self._fd, view[:_CHUNK])
                view = view[n:]
        except OSError as e:
            raise write_error(self.path, e) from None

    def _digest(self) -> None:
        self.sha256 = self._sha.hexdigest()

    def _close(self) -> None:
        # No fsync here: the output directory fsyncs every file once, just before it is
        # renamed into place, so writeback of finished files overlaps with writing the rest.
        try:
            os.close(self._fd)
        except OSError as e:
            raise write_error(self.path, e) from None
        finally:
            self._fd = -1

    def close(self) -> None:
        """Finish the digest and close (on the worker, if any)."""
        if self._worker is None:
            self._digest()
            self._close()
        else:
            self._worker.submit(self._digest, self._close)

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


def _noop() -> None:
    pass


class HashedWriter:
    """Base of the output formats written through a HashedFile: checksum and abort are the file's."""

    _file: HashedFile

    @property
    def sha256(self) -> str:
        assert self._file.sha256 is not None, "file not finished"
        return self._file.sha256

    def abort(self) -> None:
        self._file.abort()


class Worker:
    """A two-thread pipeline: each job's first part runs on the hashing thread, then its
    second part on the writing thread, both in submission order. The first failure stops
    further jobs and is raised to the submitting thread on its next call.

    Submitting blocks while queued jobs hold more than `max_bytes` of tensors, so memory stays
    bounded however far reading runs ahead of writing.
    """

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self._hash_q: queue.Queue = queue.Queue()
        self._write_q: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._max = max_bytes
        self._pending = 0
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._run, args=(self._hash_q, self._write_q), name="ckpt-hash", daemon=True),
            threading.Thread(target=self._run, args=(self._write_q, None), name="ckpt-write", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _run(self, inbox: queue.Queue, outbox: queue.Queue | None) -> None:
        while True:
            item = inbox.get()
            if item is None:
                if outbox is not None:
                    outbox.put(None)
                return
            first, second, nbytes, always = item
            item = None
            if self._error is None or always:
                try:
                    first()
                except BaseException as e:  # handed back to the submitting thread
                    self._error = self._error or e
            first = None  # drop references to tensor memory as soon as possible
            if outbox is not None:
                outbox.put((second, _noop, nbytes, always))
                second = None
            else:
                with self._cond:
                    self._pending -= nbytes
                    self._cond.notify_all()

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, first: Callable[[], None], second: Callable[[], None] = _noop, nbytes: int = 0) -> None:
        self._check()
        with self._cond:
            while self._pending and self._pending + nbytes > self._max and self._error is None:
                self._cond.wait()
            self._pending += nbytes
        self._check()
        self._hash_q.put((first, second, nbytes, False))

    def submit_cleanup(self, job: Callable[[], None]) -> None:
        """Queue a job for the writing thread that runs even after a failure; never raises."""
        self._hash_q.put((_noop, job, 0, True))

    def drain(self) -> None:
        """Wait until every submitted job has run; re-raise the first failure."""
        done = threading.Event()
        self._hash_q.put((_noop, done.set, 0, True))
        done.wait()
        self._check()

    def close(self) -> None:
        self._hash_q.put(None)
        for t in self._threads:
            t.join()
