"""The SSH transport (paramiko): verified host keys, keepalives, timeouts, reconnects."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from q7x2_deploy.errors import DeployError
from q7x2_deploy.transport.base import (
    CommandResult,
    HostUnreachable,
    RemoteProcess,
    Transport,
    TransportError,
    quote_argv,
)
from q7x2_deploy.transport.hostkeys import (
    HostKeyRefused,
    VerifyingPolicy,
    fingerprint,
    keys_for,
    known_hosts_name,
)

_CHUNK = 1 << 16


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


@dataclass(frozen=True)
class SSHConfig:
    host: str  # the inventory's name, used in every message
    address: str
    port: int = 22
    user: str = "root"
    identity: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    accept_new_host_keys: bool = False
    connect_timeout: float = 15.0
    # A keepalive every few seconds keeps NAT/firewall state alive during long quiet phases
    # (conversion can print nothing for minutes); liveness itself is checked with `ping`.
    keepalive_interval: int = 5

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts).expanduser()


class _SSHProcess(RemoteProcess):
    def __init__(self, host: str, channel: paramiko.Channel) -> None:
        self._host = host
        self._chan = channel

    def lines(self) -> Iterator[str]:
        buf = b""
        while True:
            try:
                data = self._chan.recv(_CHUNK)
            except (OSError, EOFError, paramiko.SSHException):
                data = b""
            if not data:
                break
            buf += data
            *complete, buf = buf.split(b"\n")
            for raw in complete:
                yield raw.rstrip(b"\r").decode("utf-8", "replace")
        if buf:
            yield buf.rstrip(b"\r").decode("utf-8", "replace")

    def chunks(self) -> Iterator[bytes]:
        while True:
            try:
                data = self._chan.recv(_CHUNK)
            except (OSError, EOFError, paramiko.SSHException):
                data = b""
            if not data:
                return
            yield data

    def write(self, data: bytes) -> None:
        try:
            self._chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise HostUnreachable(f"{self._host}: connection lost while sending data: {e}") from e

    def close_stdin(self) -> None:
        try:
            self._chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def wait(self, timeout: float | None = None) -> int:
        if not self._chan.status_event.wait(timeout):
            raise TransportError(f"{self._host}: command did not finish within {timeout:.0f}s")
        status = self._chan.recv_exit_status()
        if status == -1:  # paramiko's value when the channel closed without a status
            raise HostUnreachable(f"{self._host}: connection lost before the command finished")
        return status

    def close(self) -> None:
        try:
            self._chan.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass


class SSHTransport(Transport):
    """Thread-safe: one SSH connection per host, one channel per command."""

    def __init__(self, config: SSHConfig) -> None:
        self.config = config
        self.host = config.host
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------

    def connect(self) -> paramiko.Transport:
        """The live connection, (re)connecting if needed. Raises a one-line DeployError."""
        with self._lock:
            if self._client is not None:
                t = self._client.get_transport()
                if t is not None and t.is_active():
                    return t
                self._client.close()
                self._client = None
            self._client = self._open()
            t = self._client.get_transport()
            assert t is not None
            return t

    def _open(self) -> paramiko.SSHClient:
        c = self.config
        client = paramiko.SSHClient()
        # paramiko consults the client's own host key table; copy in this host's verified
        # keys (only its own: copying every host's into every client cost O(hosts²) each).
        name = known_hosts_name(c.address, c.port)
        for keytype, key in keys_for(c.known_hosts_path, name).items():
            client.get_host_keys().add(name, keytype, key)
        client.set_missing_host_key_policy(
            VerifyingPolicy(c.host, c.known_hosts_path, c.accept_new_host_keys)
        )
        where = f"{c.user}@{c.address}:{c.port}"
        sock: socket.socket | None = None
        try:
            sock = _low_latency_socket(socket.create_connection((c.address, c.port),
                                                               timeout=c.connect_timeout))
            client.connect(
                sock=sock,
                hostname=c.address,
                port=c.port,
                username=c.user,
                key_filename=str(Path(c.identity).expanduser()) if c.identity else None,
                timeout=c.connect_timeout,
                banner_timeout=c.connect_timeout,
                auth_timeout=c.connect_timeout,
                channel_timeout=c.connect_timeout,
                allow_agent=False,
                look_for_keys=c.identity is None,
            )
        except BaseException as e:
            client.close()
            if sock is not None:
                sock.close()
            err = self._connect_error(e, where)
            if err is e:
                raise
            raise err from e
        t = client.get_transport()
        assert t is not None
        t.set_keepalive(c.keepalive_interval)
        return client

    def _connect_error(self, e: BaseException, where: str) -> BaseException:
        """The one-line error a failed connect becomes (`e` itself when it already is one)."""
        c = self.config
        if isinstance(e, paramiko.BadHostKeyException):
            return HostKeyRefused(
                f"{c.host}: host key for {known_hosts_name(c.address, c.port)} CHANGED "
                f"(offers {fingerprint(e.key)}, {c.known_hosts_path} expects "
                f"{fingerprint(e.expected_key)}); refusing to connect"
            )
        if isinstance(e, paramiko.AuthenticationException):
            return DeployError(
                f"{c.host}: SSH login to {where} refused (identity {c.identity or 'default keys'}): {e}"
            )
        if isinstance(e, FileNotFoundError):
            return DeployError(f"{c.host}: SSH identity file not found: {e.filename}")
        if isinstance(e, HostKeyRefused) or not isinstance(
            e, (OSError, socket.timeout, paramiko.SSHException, EOFError)
        ):
            return e
        return HostUnreachable(f"{c.host}: cannot reach {where}: {e or type(e).__name__}")

    def _channel(self, argv: Sequence[str], merge_stderr: bool, open_timeout: float | None = None) -> paramiko.Channel:
        command = quote_argv(argv)
        t = self.connect()
        try:
            # A connection whose peer vanished without a word still looks active; the channel
            # open is the first thing to notice, so it gets the caller's deadline.
            chan = t.open_session(timeout=min(open_timeout or self.config.connect_timeout,
                                              self.config.connect_timeout))
            chan.set_combine_stderr(merge_stderr)
            chan.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise HostUnreachable(f"{self.host}: could not start a command over SSH: {e}") from e
        return chan

    # -- Transport --------------------------------------------------------------------

    def start(self, argv: Sequence[str], *, merge_stderr: bool = True) -> RemoteProcess:
        return _SSHProcess(self.host, self._channel(argv, merge_stderr))

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | Iterable[bytes] | None = None,
        timeout: float | None = 60.0,
    ) -> CommandResult:
        chan = self._channel(argv, merge_stderr=False, open_timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        feed_error: list[BaseException] = []

        def _feed() -> None:
            try:
                if stdin is not None:
                    for chunk in [stdin] if isinstance(stdin, bytes) else stdin:
                        if chunk:
                            chan.sendall(chunk)
                chan.shutdown_write()
            except BaseException as e:  # reported after the command finishes
                feed_error.append(e)

        err_parts: list[bytes] = []

        def _drain_stderr() -> None:
            try:
                while data := chan.recv_stderr(_CHUNK):
                    err_parts.append(data)
            except (OSError, EOFError, paramiko.SSHException):
                pass

        feeder = threading.Thread(target=_feed, daemon=True)
        drainer = threading.Thread(target=_drain_stderr, daemon=True)
        feeder.start()
        drainer.start()
        out_parts: list[bytes] = []
        try:
            while True:
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise socket.timeout()
                    chan.settimeout(remaining)
                data = chan.recv(_CHUNK)
                if not data:
                    break
                out_parts.append(data)
            status_wait = None if deadline is None else max(0.1, deadline - time.monotonic())
            if not chan.status_event.wait(status_wait):
                raise socket.timeout()
        except socket.timeout:
            chan.close()
            raise TransportError(
                f"{self.host}: `{quote_argv(argv)}` did not finish within {timeout:.0f}s"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            chan.close()
            raise HostUnreachable(f"{self.host}: connection lost running `{argv[0]}`: {e}") from e
        drainer.join(timeout=5)
        feeder.join(timeout=5)
        status = chan.recv_exit_status()
        chan.close()
        if status == -1:
            raise HostUnreachable(f"{self.host}: connection lost before `{argv[0]}` finished")
        if feed_error and status == 0:
            raise TransportError(f"{self.host}: sending input to `{argv[0]}` failed: {feed_error[0]}")
        return CommandResult(
            argv=tuple(argv),
            exit_status=status,
            stdout=b"".join(out_parts).decode("utf-8", "replace"),
            stderr=b"".join(err_parts).decode("utf-8", "replace"),
        )

    def ping(self, timeout: float = 10.0) -> None:
        try:
            self.run(["true"], timeout=timeout)
        except HostKeyRefused:
            raise
        except DeployError as e:
            raise HostUnreachable(f"{self.host}: stopped answering ({e})") from e

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
