"""Running system tools, checking preconditions and handling processes by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

from q7x2_runtime.errors import UserError

# binary -> Debian package that provides it
REQUIRED_BINARIES: dict[str, str] = {
    "ip": "iproute2",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "dockerd": "docker.io",
    "containerd": "containerd",
    "runc": "runc",
    "docker-registry": "docker-registry",
    "debootstrap": "debootstrap",
}
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(binary: str) -> str | None:
    path = os.environ.get("PATH", "") + ":" + ":".join(_SBIN)
    return shutil.which(binary, path=path)


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the sandbox needs root (network namespaces, mounts, engines): run it with sudo")


def require_binaries(names: Sequence[str] | None = None) -> None:
    names = list(names or REQUIRED_BINARIES)
    missing = sorted({REQUIRED_BINARIES[b] for b in names if which(b) is None})
    if missing:
        raise UserError(
            f"missing Debian packages: run `apt-get install -y {' '.join(missing)}` "
            "(or scripts/install-host-deps.sh)"
        )


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool; on failure raise a one-line UserError with its stderr."""
    exe = which(argv[0]) or argv[0]
    proc = subprocess.run([exe, *argv[1:]], input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(f"`{' '.join(argv)}` failed: {err[-1] if err else f'exit {proc.returncode}'}")
    return proc


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # field 3 is the state; a zombie is dead for our purposes
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def pid_matches(pid: int | None, marker: str) -> bool:
    """True when pid is alive and its command line mentions marker: guards against PID reuse."""
    return bool(pid) and pid_alive(pid) and any(marker in a for a in cmdline(pid))  # type: ignore[arg-type]


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(x) for x in text)
    except OSError:
        pass
    return out


def kill_and_wait(pids: Sequence[int], sig: int = signal.SIGKILL, timeout: float = 15) -> None:
    pids = [p for p in pids if p > 1 and p != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)


def ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_netns(netns_path: str) -> list[int]:
    """Every process whose network namespace is the given one (the host's daemons and containers)."""
    ino = ns_inode(netns_path)
    if ino is None or ino == ns_inode("/proc/self/ns/net"):
        return []
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                    out.append(int(entry))
            except OSError:
                continue
    return out


def pids_in_pidns_of(pid: int) -> list[int]:
    """Processes whose PID namespace is that of pid (for a host's init: everything on the host).

    Never the caller's own PID namespace: that would be every process of the machine.
    """
    ino = ns_inode(f"/proc/{pid}/ns/pid")
    if ino is None or ino == ns_inode("/proc/self/ns/pid"):
        return []
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == ino:
                    out.append(int(entry))
            except OSError:
                continue
    return out
