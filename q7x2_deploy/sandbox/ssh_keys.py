"""SSH keys of the sandbox: the operator's login key, each host's host key, known_hosts."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def ensure_keypair(private: Path, comment: str) -> str:
    """Create an ed25519 key pair (OpenSSH format) if absent; return the public key line."""
    pub = private.with_name(private.name + ".pub")
    if not private.exists() or not pub.exists():
        key = Ed25519PrivateKey.generate()
        private.parent.mkdir(parents=True, exist_ok=True)
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()
        pub.write_text(f"{line} {comment}\n", encoding="ascii")
    return pub.read_text(encoding="ascii").strip()


def known_hosts_line(names: list[str], public_line: str) -> str:
    keytype, blob = public_line.split()[:2]
    return f"{','.join(names)} {keytype} {blob}"


def write_known_hosts(path: Path, entries: list[tuple[list[str], str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(known_hosts_line(n, p) + "\n" for n, p in entries), encoding="ascii")
