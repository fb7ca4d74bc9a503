"""Shared by the convert and preprocess error tests: small real filesystems (full, out of
inodes, read-only: tmpfs, as root), runs as another user, and the one-error-line check."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

NOBODY = 65534


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


needs_root = pytest.mark.skipif(not can_mount(), reason="needs root to mount a tmpfs")


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `where` with mount options such as "size=64k" or "nr_inodes=8"."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"mode=0777,{options}", "q7x2-test", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temp directory every user may enter (pytest's tmp_path sits under a 0700 directory),
    for runs as `nobody`."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="q7x2-test-", dir="/tmp"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def open_up(*roots: Path) -> None:
    """Make trees readable (and directories writable) for every user."""
    for root in roots:
        for p in [root, *root.rglob("*")]:
            os.chmod(p, 0o777 if p.is_dir() else 0o644)


def fill_inodes(root: Path) -> None:
    """Use up every free inode of the filesystem holding `root`."""
    i = 0
    while True:
        try:
            (root / f"f{i}").touch()
        except OSError:
            return
        i += 1


def run_cli(*argv: str, user: int | None = None, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`q7x2-runtime ARGV` in a fresh interpreter (optionally as another uid), bounded in time."""
    prefix = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    return subprocess.run(
        [*prefix, sys.executable, "-m", "q7x2_runtime.cli", *argv],
        capture_output=True, text=True, timeout=timeout, env=env, cwd="/",
    )  # fmt: skip


def one_error_line(stderr: str, command: str) -> str:
    """The single error line of a failed run: no traceback, nothing else on stderr."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"q7x2-runtime {command}: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def debris_in(parent: Path) -> list[str]:
    """Temporaries a run leaves next to its output while it writes (or if it is killed)."""
    if not parent.exists():
        return []
    return sorted(p.name for p in parent.iterdir() if any(t in p.name for t in (".partial-", ".old-", ".tmp-")))


def start_cli(*argv: str, env: dict | None = None) -> subprocess.Popen:
    """`q7x2-runtime ARGV` in its own process group (so a kill takes its workers too)."""
    return subprocess.Popen(
        [sys.executable, "-m", "q7x2_runtime.cli", *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip


def kill_when(proc: subprocess.Popen, parent: Path, delay: float, after_debris: bool, timeout: float = 300) -> bool:
    """SIGKILL the whole process group `delay` seconds after start, or (after_debris) `delay`
    seconds after its first temporary appears in `parent`. False if it finished first."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    if after_debris:
        while not debris_in(parent):
            if proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise TimeoutError("no temporary output appeared")
            time.sleep(0.001)
    end = time.monotonic() + delay
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL


def children(pid: int) -> list[int]:
    """The PIDs of a live process's children (every thread's, from /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first); OSError if gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return proc_stat(pid)[0] != "Z"
    except OSError:
        return False
