"""A throwaway sshd on 127.0.0.1 for transport tests: own host key, own client key."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LocalSSHD:
    port: int
    identity: Path
    host_key_pub: Path
    known_hosts: Path
    proc: subprocess.Popen

    def known_hosts_line(self) -> str:
        kind, b64 = self.host_key_pub.read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}\n"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clear_stale_pyenv_lock(max_age_s: float = 120.0) -> None:
    """pyenv's rehash lock left by a login that was killed: remove it when no rehash runs and it is
    old, as pyenv's own message advises; otherwise every login here prints pyenv's complaint."""
    lock = Path.home() / ".pyenv" / "shims" / ".pyenv-shim"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    running = subprocess.run(["pgrep", "-f", "pyenv-rehash"], capture_output=True).returncode == 0
    if age > max_age_s and not running:
        lock.unlink(missing_ok=True)


def start_sshd(workdir: Path, port: int | None = None) -> LocalSSHD:
    _clear_stale_pyenv_lock()
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "host_ed25519"
    client_key = workdir / "id_ed25519"
    for key in (host_key, client_key):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    auth = workdir / "authorized_keys"
    auth.write_text(client_key.with_suffix(".pub").read_text())
    auth.chmod(0o600)
    port = port or _free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{port}\nHostKey {host_key}\nAuthorizedKeysFile {auth}\n"
        f"PidFile {workdir / 'sshd.pid'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nMaxSessions 64\nMaxStartups 64\nLogLevel ERROR\n"
        # Logins here run root's own rc files. On a machine whose .bashrc runs `pyenv init`, a
        # login killed mid-rehash (the lost-host tests kill sshd) leaves pyenv's lock behind and
        # every later login would wait 60 s on it; one second is enough to give up.
        "SetEnv PYENV_REHASH_TIMEOUT=1\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("sshd did not start")
    return LocalSSHD(port, client_key, host_key.with_suffix(".pub"), workdir / "known_hosts", proc)
