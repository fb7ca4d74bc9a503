"""Host key verification against the inventory's known_hosts file.

The rules OpenSSH users expect: a known key must match exactly (a changed key is always
refused, whatever the flags); an unknown host is refused unless the operator asked to accept
new keys, in which case its key is appended to known_hosts so the next run verifies it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import paramiko

from q7x2_deploy.errors import DeployError

# Several hosts may be accepted at once from parallel threads: appends must not interleave.
_APPEND_LOCK = threading.Lock()
# known_hosts parsed once per version of the file, not once per host: parsing builds a key
# object per line, so with one file naming every host, per-host parsing grew with hosts².
_PARSED: dict[Path, tuple[tuple[int, int, int], paramiko.HostKeys]] = {}
# Per parsed file, each plainly named host's keys: paramiko's lookup walks every entry, so
# looking up every host of a file that names them all cost O(hosts²) again.
# Holds the table itself, so an id is never that of a freed table.
_BY_NAME: dict[int, tuple[paramiko.HostKeys, dict[str, dict[str, paramiko.PKey]] | None]] = {}
_PARSED_LOCK = threading.Lock()


class HostKeyRefused(DeployError):
    """The host's key is unknown (and not accepted) or differs from known_hosts."""


def known_hosts_name(address: str, port: int) -> str:
    """The name OpenSSH files a host under: bare address on port 22, `[address]:port` otherwise."""
    return address if port == 22 else f"[{address}]:{port}"


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    """The parsed file (shared: treat it as read-only); an empty table if it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return paramiko.HostKeys()
    except OSError as e:
        raise DeployError(f"cannot read known_hosts {path}: {e}") from e
    version = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _PARSED_LOCK:
        cached = _PARSED.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        keys = paramiko.HostKeys()
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException) as e:
            raise DeployError(f"cannot read known_hosts {path}: {e}") from e
        _PARSED[path] = (version, keys)
        return keys


def keys_for(path: Path, name: str) -> dict[str, paramiko.PKey]:
    """The known keys of one host (by its known_hosts name; hashed entries match too)."""
    table = load_known_hosts(path)
    index = _name_index(table)
    if index is not None:
        return dict(index.get(name, {}))
    found = table.lookup(name)
    return dict(found.items()) if found else {}


def _name_index(table: paramiko.HostKeys) -> dict[str, dict[str, paramiko.PKey]] | None:
    """name -> {key type: key} of a parsed table; None if it has hashed names (only
    paramiko's lookup can match those), which are then looked up as before."""
    with _PARSED_LOCK:
        cached = _BY_NAME.get(id(table))
        if cached is not None and cached[0] is table:
            return cached[1]
        index: dict[str, dict[str, paramiko.PKey]] | None = {}
        # paramiko keeps the lines in file order (no public accessor); the first key of a type wins.
        for entry in table._entries:  # type: ignore[attr-defined]
            if index is None or any(h.startswith("|1|") for h in entry.hostnames):
                index = None
                break
            if entry.key is None:
                continue
            for h in entry.hostnames:
                index.setdefault(h, {}).setdefault(entry.key.get_name(), entry.key)
        if len(_BY_NAME) >= 8:  # older versions of the files are not asked about again
            _BY_NAME.pop(next(iter(_BY_NAME)))
        _BY_NAME[id(table)] = (table, index)
        return index


def append_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    with _APPEND_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as f:
            f.write(line)


def fingerprint(key: paramiko.PKey) -> str:
    """What `ssh` prints for a key: type and SHA256 fingerprint."""
    return f"{key.get_name()} {key.fingerprint}"


class VerifyingPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko only when known_hosts has no key of the offered type for the host."""

    def __init__(self, host: str, known_hosts: Path, accept_new: bool) -> None:
        self.host = host
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        other_types = client.get_host_keys().lookup(hostname)
        if other_types:
            # Known under another key type that the server no longer offers: treat as changed.
            raise HostKeyRefused(
                f"host key for {hostname} CHANGED (known as "
                f"{', '.join(other_types.keys())}, now offers {fingerprint(key)}); refusing. "
                f"If the host was reinstalled, remove its entry from {self.known_hosts}", host=self.host
            )
        if not self.accept_new:
            raise HostKeyRefused(
                f"unknown host key for {hostname} ({fingerprint(key)}), not in "
                f"{self.known_hosts}; verify it and add it, or rerun with --accept-new-host-keys", host=self.host
            )
        append_known_host(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
