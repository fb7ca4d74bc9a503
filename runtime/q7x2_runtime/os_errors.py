"""One line for a failed file operation: what failed, on which path, what the user can do.

Disk full, no free inodes, a read-only filesystem, a directory the user may not write: these
are the environment, not bugs, so they never end in a traceback. `flag` names the option that
chose the path (--save-dir, --output-prefix), so the advice can say which one to change.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from q7x2_runtime.errors import UserError

# Failures caused by the machine or the user's paths; anything else is a bug and keeps its traceback.
ENVIRONMENTAL = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
    errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.ENFILE, errno.EIO, errno.ENOENT, errno.EEXIST,
    errno.EFBIG, errno.ENXIO, errno.ENODEV, errno.ESTALE, errno.EXDEV, errno.ENOTEMPTY,
}


def _existing_ancestor(path: Path) -> Path:
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def out_of_inodes(path: Path) -> bool:
    try:
        st = os.statvfs(_existing_ancestor(path))
    except OSError:
        return False
    # Filesystems without an inode limit report f_files == 0.
    return st.f_files > 0 and st.f_favail == 0


def reason(path: Path, e: OSError, flag: str = "") -> str:
    """What went wrong and what to do about it, without the path."""
    other = f" or choose another {flag}" if flag else ""
    code = e.errno
    if code == errno.ENOSPC:
        if out_of_inodes(path):
            return f"no free inodes left on that filesystem (see df -i); delete files there{other}"
        return f"disk full; free space on that filesystem{other}"
    if code == errno.EDQUOT:
        return f"disk quota exceeded; free space within your quota{other}"
    if code == errno.EROFS:
        return f"the filesystem is read-only; choose another {flag}" if flag else "the filesystem is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied for uid {os.getuid()}; fix the permissions{other}"
    if code == errno.ENOENT:
        return "no such file or directory"
    if code == errno.ENOTDIR:
        return "a component of the path is not a directory"
    if code == errno.EISDIR:
        return "is a directory"
    if code == errno.ENAMETOOLONG:
        return "file name too long"
    if code in (errno.EMFILE, errno.ENFILE):
        return "too many open files; raise the open-file limit (ulimit -n)"
    if code == errno.EIO:
        return "input/output error (a failing disk or a lost network mount?)"
    return e.strerror or e.__class__.__name__


def os_error(doing: str, path: Path | str, e: OSError, flag: str = "") -> UserError:
    """`cannot <doing> <path>: <reason>` as a UserError."""
    return UserError(f"cannot {doing} {path}: {reason(Path(path), e, flag)}")


def is_environmental(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in ENVIRONMENTAL


_KIND = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def kind_of(mode: int) -> str:
    return _KIND.get(stat.S_IFMT(mode), "not a regular file")


def present(path: Path, what: str) -> bool:
    """Whether `path` exists (as anything, a broken symlink too). Unlike os.path.exists, a
    directory we may not search is reported as what it is, not as a missing file."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {reason(Path(path), e)}") from None
    return True


def regular_file(path: Path, what: str, max_bytes: int | None = None) -> os.stat_result:
    """stat() a file that is about to be read: a regular file of a sane size, or one UserError.

    A FIFO would block the reader forever and a device would never end, so only regular
    files are read. The path is not opened here, so nothing blocks.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UserError(f"{what} {path} is a broken symbolic link (its target does not exist)") from None
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {reason(Path(path), e)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is {kind_of(st.st_mode)}, not a regular file")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read {what} {path}: permission denied for uid {os.getuid()}; make it readable")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserError(f"{what} {path} is {st.st_size:,} bytes, more than the {max_bytes:,} such a file can plausibly be")
    return st
