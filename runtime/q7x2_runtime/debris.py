"""Telling a dead run's temporary files from a live run's, so a rerun can remove the former.

Every run writes its output under hidden names tagged with its PID (".NAME.partial-PID/",
".NAME.bin.tmp-PID") and holds an exclusive advisory lock (flock) on one of those files for
as long as it is writing. The kernel drops the lock when the process dies, however it dies
(SIGKILL, OOM killer, a stopped container), so a free lock means a dead owner; a reused PID
never holds it, and a live run in another container (another PID namespace, where our /proc
cannot see it) still does. Over NFS, Linux emulates flock with byte-range locks that the
server tracks, so this holds across hosts sharing the storage too.

Only when there is no lock file to test (the run died between creating its directory and
its lock file, a window of a few syscalls) or the filesystem refuses locks does the PID
decide, conservatively: the owner is dead when its PID is gone from /proc, or when the
process now holding that PID started after the debris was last modified (the PID was reused).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from pathlib import Path


class OwnerLock:
    """An exclusive flock on `path` (created if needed), held until release() or process exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # O_RDWR: NFS emulates flock with write locks, which need a descriptor open for writing.
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(100):
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) and attempt < 99:
                    time.sleep(0.01)  # another run's lock_held() probe holds it for an instant
                    continue
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    return  # no locks on this filesystem: the PID rule alone decides for our debris
                os.close(self.fd)
                raise

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_held(path: Path) -> bool | None:
    """True if some process holds `path`'s lock, False if nobody does, None if we cannot tell."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None  # missing (or not ours to open): no verdict
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return True if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError(errno.ENOENT, "no btime in /proc/stat")


def process_start_time(pid: int) -> float | None:
    """Wall-clock start of process `pid` as this PID namespace sees it; None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    ticks = int(fields[19])  # field 22, starttime, counted from field 3
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def pid_gone(pid: int, debris: Path) -> bool:
    """The PID rule: no such process, or one that started after `debris` last changed."""
    try:
        start = process_start_time(pid)
    except (OSError, ValueError, IndexError):
        return False  # cannot read /proc: assume alive
    if start is None:
        return True
    try:
        changed = os.lstat(debris).st_mtime
    except FileNotFoundError:
        return True
    # Start times have clock-tick resolution; allow for it before calling the PID reused.
    return start > changed + 1.0


def owner_dead(pid: int, lock_file: Path | None, debris: Path) -> bool:
    """Whether the run that left `debris` (tagged with `pid`) is gone; see the module doc."""
    if lock_file is not None:
        held = lock_held(lock_file)
        if held is not None:
            return not held
    return pid_gone(pid, debris)


def remove(path: Path) -> None:
    """Delete a file or a directory tree; never follows a symlink."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
