"""Opening SSH connections: a low-latency TCP socket, the verified login, and jump hosts.

A host behind jump hosts (ProxyJump) is reached through a `direct-tcpip` channel of the last
jump host's connection; each jump host is itself logged in to, host key verified, exactly like
any host. Jump-host connections live in a `JumpPool` shared by every host behind them.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import paramiko

from q7x2_deploy.errors import DeployError
from q7x2_deploy.transport.base import HostUnreachable
from q7x2_deploy.transport.hostkeys import HostKeyRefused, VerifyingPolicy, fingerprint, keys_for, known_hosts_name

if TYPE_CHECKING:
    from q7x2_deploy.transport.ssh import SSHConfig

class _PromptAckSocket(socket.socket):
    """A TCP socket that acknowledges what it reads at once instead of ~40 ms later.

    sshd sends exec-channel replies with Nagle's algorithm on, so a small reply waits until
    the previous one is acknowledged, and Linux delays that acknowledgement by 40 ms. Right
    after login that cost every first command on a connection ~45 ms (a fresh `check` of one
    host took 0.13 s, of which 0.08 s was waiting). TCP_QUICKACK is not sticky, so it is
    re-armed after every read; paramiko reads only through recv().
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def _low_latency_socket(sock: socket.socket) -> socket.socket:
    """TCP_NODELAY (paramiko never sets it) and, where the OS has it, prompt ACKs."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not hasattr(socket, "TCP_QUICKACK"):  # Linux-only option
        return sock
    timeout = sock.gettimeout()
    prompt = _PromptAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    prompt.settimeout(timeout)
    return prompt


# Private keys parsed once per version of the file, not once per login: given a key file,
# paramiko reads and parses it afresh for every connection, trying the RSA and ECDSA
# parsers before the Ed25519 one, a cost every host of a large cluster pays again.
_IDENTITIES: dict[str, tuple[tuple[int, ...], paramiko.PKey]] = {}
_IDENTITIES_LOCK = threading.Lock()


def _parsed_identity(path: str) -> paramiko.PKey | None:
    """The key in `path` (its `-cert.pub` certificate loaded too, as paramiko does), parsed
    once per version of the file; None when it cannot be loaded without help (a missing
    file, a passphrase, an unknown type): paramiko then reads the file and reports as usual."""
    try:
        st = os.stat(path)
        cert = os.stat(path + "-cert.pub") if os.path.exists(path + "-cert.pub") else None
    except OSError:
        return None
    version = (st.st_mtime_ns, st.st_size, st.st_ino, *((cert.st_mtime_ns, cert.st_size) if cert else ()))
    with _IDENTITIES_LOCK:
        cached = _IDENTITIES.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
    try:
        key = paramiko.PKey.from_path(path)
    except Exception:  # paramiko's own login attempt gives the error the user should see
        return None
    with _IDENTITIES_LOCK:
        _IDENTITIES[path] = (version, key)
    return key


# AES-GCM first (OpenSSH's own order puts it right after chacha20-poly1305, which paramiko
# lacks): an AEAD cipher authenticates each packet inside the C library, where paramiko's
# default, AES-CTR with HMAC-SHA2, computes an HMAC object and compares the tag byte by byte in
# Python for every packet in both directions. The rest of paramiko's list follows unchanged,
# so a server without GCM still agrees on the same ciphers as before.
AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


# What paramiko's Transport takes as its stream (its stubs' _SocketLike: a socket, a Channel, an
# address, a ProxyCommand); the logins here pass a socket or a jump host's channel.
TransportSocket = Any


class _Transport(paramiko.Transport):
    """paramiko's Transport, its reader thread woken once a second instead of ten times.

    The reader blocks on the socket with this timeout only to notice that the connection was
    closed on our side (data, EOF and a reset wake it at once; keepalives are checked on each
    wake-up, so they go out at most a second late). 64 idle connections cost 0.66 ms of CPU per
    host per second with ten wake-ups a second (4% of a core), 0.21 ms with one; a 64-host
    `check` holds its connections for seconds. The price: a closed connection's thread ends
    up to a second later (close() does not wait for it).
    """

    _active_check_timeout = 1.0


def _client_transport(sock: TransportSocket, /, *, disabled_algorithms: Mapping[str, Iterable[str]] | None = None,
                      **_gss: bool) -> paramiko.Transport:
    """SSHClient.connect's transport_factory: a `_Transport` that offers the AEAD ciphers first.
    (paramiko passes only disabled_algorithms; its stubs still name GSS flags it no longer has.)"""
    t = _Transport(sock, disabled_algorithms=disabled_algorithms)
    options = t.get_security_options()
    offered = tuple(options.ciphers)
    options.ciphers = tuple(c for c in AEAD_CIPHERS if c in offered) + tuple(c for c in offered if c not in AEAD_CIPHERS)
    return t


def login(c: SSHConfig, sock: socket.socket | paramiko.Channel) -> paramiko.SSHClient:
    """Log in over an open stream (a TCP socket or a jump host's channel), verifying the host key.

    Raises a one-line DeployError naming `c.host`; the stream is closed on failure.
    """
    client = paramiko.SSHClient()
    # paramiko consults the client's own host key table; copy in this host's verified
    # keys (only its own: copying every host's into every client cost O(hosts²) each).
    name = known_hosts_name(c.address, c.port)
    for path in c.known_hosts_paths:
        for keytype, key in keys_for(path, name).items():
            client.get_host_keys().add(name, keytype, key)
    client.set_missing_host_key_policy(VerifyingPolicy(c.host, c.known_hosts_path, c.accept_new_host_keys))
    keys = c.identity_files
    pkey = _parsed_identity(keys[0]) if len(keys) == 1 else None
    try:
        client.connect(
            sock=sock,  # type: ignore[arg-type]  # paramiko takes a Channel as the stream too
            hostname=c.address,
            port=c.port,
            username=c.user,
            pkey=pkey,
            key_filename=None if pkey is not None else keys or None,  # type: ignore[arg-type]  # paramiko takes a list of files too
            timeout=c.connect_timeout,
            banner_timeout=c.connect_timeout,
            auth_timeout=c.connect_timeout,
            channel_timeout=c.connect_timeout,
            transport_factory=_client_transport,
            # No identity given: the ssh-agent's keys, then the default key files, as ssh does.
            allow_agent=not keys,
            look_for_keys=not keys,
        )
    except BaseException as e:
        client.close()
        sock.close()
        err = _connect_error(c, e)
        if err is e:
            raise
        raise err from e
    t = client.get_transport()
    assert t is not None
    t.set_keepalive(c.keepalive_interval)
    return client


def _connect_error(c: SSHConfig, e: BaseException) -> BaseException:
    """The one-line error a failed login becomes (`e` itself when it already is one)."""
    where = f"{c.user}@{c.address}:{c.port}"
    if isinstance(e, paramiko.BadHostKeyException):
        return HostKeyRefused(
            f"host key for {known_hosts_name(c.address, c.port)} CHANGED "
            f"(offers {fingerprint(e.key)}, {c.known_hosts_path} expects "
            f"{fingerprint(e.expected_key)}); refusing to connect", host=c.host
        )
    if isinstance(e, paramiko.AuthenticationException):
        keys = ", ".join(c.identity_files) or "ssh-agent and default keys"
        return DeployError(f"SSH login to {where} refused (identity {keys}): {e}", host=c.host)
    if isinstance(e, paramiko.SSHException) and "No authentication methods available" in str(e):
        return DeployError(f"SSH login to {where}: no key to offer (no identity given, no ssh-agent at "
                           "SSH_AUTH_SOCK, no ~/.ssh/id_* file); set ssh.identity or IdentityFile, or add a key to the agent",
                           host=c.host)
    if isinstance(e, FileNotFoundError):
        return DeployError(f"SSH identity file not found: {e.filename}", host=c.host)
    if isinstance(e, HostKeyRefused) or not isinstance(e, (OSError, socket.timeout, paramiko.SSHException, EOFError)):
        return e
    return HostUnreachable(f"cannot reach {where}: {e or type(e).__name__}", host=c.host)


def connect_direct(c: SSHConfig) -> paramiko.SSHClient:
    where = f"{c.user}@{c.address}:{c.port}"
    try:
        raw = socket.create_connection((c.address, c.port), timeout=c.connect_timeout)
    except OSError as e:
        raise HostUnreachable(f"cannot reach {where}: {e or type(e).__name__}", host=c.host) from e
    return login(c, _low_latency_socket(raw))


class JumpPool:
    """Connections to jump hosts, one per chain, shared by every host reached through it.

    A cluster behind one bastion then logs in to the bastion once, not once per host at the
    same moment (sshd's MaxStartups, 10 by default, drops such bursts). A chain whose
    connection died is logged in to again on the next use. The connections close when the
    last transport that used them does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chain_locks: dict[tuple[SSHConfig, ...], threading.Lock] = {}
        self._clients: dict[tuple[SSHConfig, ...], paramiko.SSHClient] = {}
        self._users: set[int] = set()

    def register(self, user: object) -> None:
        with self._lock:
            self._users.add(id(user))

    def release(self, user: object) -> None:
        with self._lock:
            self._users.discard(id(user))
            if self._users:
                return
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def channel(self, chain: tuple[SSHConfig, ...], dest: tuple[str, int], timeout: float) -> paramiko.Channel:
        """A stream to dest:port opened by the last host of `chain` (sshd's direct-tcpip)."""
        t = self._transport(chain)
        hop = chain[-1]
        try:
            return t.open_channel("direct-tcpip", dest, ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as e:
            raise HostUnreachable(f"{hop.host} ({hop.user}@{hop.address}:{hop.port}) could not "
                                  f"connect to {dest[0]}:{dest[1]}: {e.text or e}") from e
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise HostUnreachable(f"{hop.host} ({hop.user}@{hop.address}:{hop.port}) stopped answering "
                                  f"while connecting to {dest[0]}:{dest[1]}: {e or type(e).__name__}") from e

    def _transport(self, chain: tuple[SSHConfig, ...]) -> paramiko.Transport:
        with self._lock:
            lock = self._chain_locks.setdefault(chain, threading.Lock())
        with lock:  # one login per chain at a time; prefixes have locks of their own
            with self._lock:
                client = self._clients.get(chain)
            if client is not None:
                t = client.get_transport()
                if t is not None and t.is_active():
                    return t
                client.close()
            hop = chain[-1]
            if len(chain) == 1:
                client = connect_direct(hop)
            else:
                client = login(hop, self.channel(chain[:-1], (hop.address, hop.port), hop.connect_timeout))
            with self._lock:
                self._clients[chain] = client
            t = client.get_transport()
            assert t is not None
            return t
