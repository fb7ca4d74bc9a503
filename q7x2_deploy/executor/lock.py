"""One `up` per job on this machine: an flock on the run directory's lock file."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from q7x2_deploy.errors import DeployError


class JobLock:
    def __init__(self, path: Path, job: str) -> None:
        self.path = path
        self.job = job
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DeployError(
                f"another `up` for job {self.job} is running on this machine (pid {holder}); "
                f"watch it with `q7x2-deploy logs -f` or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the kernel drops the flock with the descriptor
            self._fd = None

    def __enter__(self) -> "JobLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
