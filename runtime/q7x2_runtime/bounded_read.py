"""Read a file that a user named, refusing anything that is not a regular file of sane size.

A FIFO would block the reader forever, /dev/zero would fill memory, a directory or socket
gives a confusing error: each is refused with one line before a byte is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NoSuchFile(ValueError):
    """The path names nothing (callers add what to give instead)."""


def read_regular_file(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or a ValueError saying why not.

    Opened non-blocking so a FIFO never blocks, then checked with fstat on the open descriptor
    (no race between the check and the read); devices, sockets and directories are refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NoSuchFile("no such file") from None
    except IsADirectoryError:
        raise ValueError(f"is a directory, expected {what}") from None
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"is a directory, expected {what}")
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a special file"
            raise ValueError(f"is {kind}, not a regular file; expected {what}")
        if st.st_size > limit:
            raise ValueError(f"is {st.st_size} bytes, larger than {limit}: not {what}")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # the file grew while we read it
                raise ValueError(f"is larger than {limit} bytes: not {what}")
        return b"".join(chunks)
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
