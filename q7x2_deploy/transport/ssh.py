"""The SSH transport (paramiko): verified host keys, keepalives, timeouts, reconnects."""

from __future__ import annotations

import select
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
from q7x2_deploy.transport.connect import JumpPool, _PromptAckSocket, connect_direct, login

__all__ = ["JumpPool", "SSHConfig", "SSHTransport", "_PromptAckSocket"]
from q7x2_deploy.transport.hostkeys import HostKeyRefused

_CHUNK = 1 << 16


@dataclass(frozen=True)
class SSHConfig:
    host: str  # the inventory's name (or, for a jump host, its name in the ssh config), in every message
    address: str  # what is connected to
    port: int = 22
    user: str = "root"
    # One key file or several (tried in order); none: the ssh-agent's keys, then ~/.ssh/id_*.
    identity: str | tuple[str, ...] | None = None
    # One known_hosts file or several (checked in order); accepted new keys go to the first.
    known_hosts: str | tuple[str, ...] = "~/.ssh/known_hosts"
    accept_new_host_keys: bool = False
    connect_timeout: float = 15.0
    # A keepalive every few seconds keeps NAT/firewall state alive during long quiet phases
    # (conversion can print nothing for minutes); liveness itself is checked with `ping`.
    keepalive_interval: int = 5
    # ProxyJump: the hosts passed through, in connection order (the first is reached directly).
    jumps: tuple[SSHConfig, ...] = ()

    @property
    def identity_files(self) -> list[str]:
        if self.identity is None:
            return []
        files = [self.identity] if isinstance(self.identity, str) else list(self.identity)
        return [str(Path(f).expanduser()) for f in files]

    @property
    def known_hosts_paths(self) -> list[Path]:
        files = [self.known_hosts] if isinstance(self.known_hosts, str) else list(self.known_hosts)
        return [Path(f).expanduser() for f in files]

    @property
    def known_hosts_path(self) -> Path:
        """Where keys accepted with --accept-new-host-keys are appended."""
        return self.known_hosts_paths[0]

    @property
    def login(self) -> str:
        """`root@10.0.0.5:22`, with ` via ops@bastion:22` for each jump host."""
        via = f" via {' -> '.join(f'{j.user}@{j.address}:{j.port}' for j in self.jumps)}" if self.jumps else ""
        return f"{self.user}@{self.address}:{self.port}{via}"


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
            raise HostUnreachable(f"connection lost while sending data: {e}", host=self._host) from e

    def close_stdin(self) -> None:
        try:
            self._chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def wait(self, timeout: float | None = None) -> int:
        if not self._chan.status_event.wait(timeout):
            raise TransportError(f"command did not finish within {timeout:.0f}s", host=self._host)
        status = self._chan.recv_exit_status()
        if status == -1:  # paramiko's value when the channel closed without a status
            raise HostUnreachable("connection lost before the command finished", host=self._host)
        return status

    def close(self) -> None:
        try:
            self._chan.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass


def _read_both(chan: paramiko.Channel, out: list[bytes], err: list[bytes], deadline: float | None) -> None:
    """Everything the command writes to stdout and stderr, until it closes them (EOF).

    One thread reads both, woken through the channel's fileno(): paramiko sets that pipe
    whenever either stream has data or the channel ends. A reader thread per stream cost two
    thread starts per command, paid on every host of a cluster-wide check. Raises
    socket.timeout past the deadline.
    """
    wake = select.poll()  # not select(): no limit on the descriptor's number
    wake.register(chan.fileno(), select.POLLIN)
    while True:
        if chan.recv_ready():
            out.append(chan.recv(_CHUNK))
        elif chan.recv_stderr_ready():
            err.append(chan.recv_stderr(_CHUNK))
        elif chan.eof_received or chan.closed:
            # Data is handed over before the EOF that follows it: what arrived is buffered.
            while chan.recv_ready():
                out.append(chan.recv(_CHUNK))
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(_CHUNK))
            return
        else:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise socket.timeout()
            wake.poll(None if remaining is None else remaining * 1000)


class SSHTransport(Transport):
    """Thread-safe: one SSH connection per host, one channel per command."""

    def __init__(self, config: SSHConfig, jump_pool: JumpPool | None = None) -> None:
        self.config = config
        self.host = config.host
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        # Jump-host connections are shared by every host behind them (one per chain).
        self._pool = jump_pool or JumpPool()

    @property
    def login(self) -> str:
        return self.config.login

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
        if c.jumps:
            self._pool.register(self)
            try:
                sock = self._pool.channel(c.jumps, (c.address, c.port), c.connect_timeout)
            except DeployError as e:
                raise type(e)(str(e), host=c.host) from e
            return login(c, sock)
        return connect_direct(c)

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
            raise HostUnreachable(f"could not start a command over SSH: {e}", host=self.host) from e
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
        feeder: threading.Thread | None = None
        if stdin is None:
            try:
                chan.shutdown_write()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # a lost connection: the read below reports it
        else:
            def _feed() -> None:
                try:
                    for chunk in [stdin] if isinstance(stdin, bytes) else stdin:
                        if chunk:
                            chan.sendall(chunk)
                    chan.shutdown_write()
                except BaseException as e:  # reported after the command finishes
                    feed_error.append(e)

            # Input is sent while the output is read: a command that writes before it has read
            # all its input would otherwise block both sides once the windows are full.
            feeder = threading.Thread(target=_feed, daemon=True)
            feeder.start()
        out_parts: list[bytes] = []
        err_parts: list[bytes] = []
        try:
            _read_both(chan, out_parts, err_parts, deadline)
            status_wait = None if deadline is None else max(0.1, deadline - time.monotonic())
            if not chan.status_event.wait(status_wait):
                raise socket.timeout()
        except socket.timeout:
            chan.close()
            raise TransportError(f"`{quote_argv(argv)}` did not finish within {timeout:.0f}s",
                                 host=self.host) from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            chan.close()
            raise HostUnreachable(f"connection lost running `{argv[0]}`: {e}", host=self.host) from e
        if feeder is not None:
            feeder.join(timeout=5)
        status = chan.recv_exit_status()
        chan.close()
        if status == -1:
            raise HostUnreachable(f"connection lost before `{argv[0]}` finished", host=self.host)
        if feed_error and status == 0:
            raise TransportError(f"sending input to `{argv[0]}` failed: {feed_error[0]}", host=self.host)
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
            raise HostUnreachable(f"stopped answering ({e})", host=self.host) from e

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        self._pool.release(self)
