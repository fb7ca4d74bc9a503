"""The SSH transport against a real sshd: quoting, streaming, stdin, files, host keys."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import paramiko
import pytest

from q7x2_deploy.errors import DeployError
from q7x2_deploy.transport import HostUnreachable, SSHConfig, SSHTransport, quote_argv
from q7x2_deploy.transport.hostkeys import HostKeyRefused


def test_argv_reaches_the_remote_process_verbatim(ssh: SSHTransport) -> None:
    nasty = ["it's", "$(touch /tmp/q7x2-pwned)", "a b", "`id`", ";", "|", "*", "\n", ""]
    result = ssh.check(["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *nasty])
    import json

    assert json.loads(result.stdout) == nasty
    assert not Path("/tmp/q7x2-pwned").exists()


def test_quote_argv_refuses_strings() -> None:
    with pytest.raises(TypeError):
        quote_argv("ls -l")  # type: ignore[arg-type]


def test_exit_status_and_stderr_are_kept_apart(ssh: SSHTransport) -> None:
    r = ssh.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.exit_status, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(DeployError, match="local: .* exited 3"):
        ssh.check(["sh", "-c", "exit 3"])


def test_stream_yields_lines_as_they_come(ssh: SSHTransport) -> None:
    lines: list[str] = []
    status = ssh.stream(["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.1; done; exit 4"],
                        lines.append)
    assert lines == ["line 1", "line 2", "line 3"] and status == 4


def test_stream_can_be_stopped(ssh: SSHTransport) -> None:
    stop = threading.Event()
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        stop.set()

    assert ssh.stream(["sh", "-c", "while true; do echo tick; sleep 0.2; done"], on_line, stop=stop) == -1
    assert seen[0] == "tick"


def test_stdin_stream_and_write_file(ssh: SSHTransport, tmp_path: Path) -> None:
    chunks = [b"x" * 100_000 for _ in range(30)]
    r = ssh.check(["wc", "-c"], stdin=iter(chunks))
    assert int(r.stdout.strip()) == 3_000_000
    target = tmp_path / "sub dir" / "job.json"
    ssh.write_file(str(target), b'{"a": 1}\n', mode=0o640)
    assert target.read_bytes() == b'{"a": 1}\n'
    assert oct(target.stat().st_mode & 0o777) == "0o640"


def test_run_timeout(ssh: SSHTransport) -> None:
    with pytest.raises(DeployError, match="did not finish within"):
        ssh.run(["sleep", "5"], timeout=0.5)


def test_unknown_host_key_is_refused_then_accepted_on_request(ssh_config: SSHConfig) -> None:
    known = Path(ssh_config.known_hosts)
    known.write_text("")
    with pytest.raises(HostKeyRefused, match="unknown host key .*--accept-new-host-keys"):
        SSHTransport(ssh_config).ping()
    accepting = SSHConfig(**{**ssh_config.__dict__, "accept_new_host_keys": True})
    t = SSHTransport(accepting)
    t.ping()
    t.close()
    assert f"[127.0.0.1]:{ssh_config.port} ssh-ed25519 " in known.read_text()
    t = SSHTransport(ssh_config)  # now known: no flag needed
    t.ping()
    t.close()


def test_changed_host_key_is_always_refused(ssh_config: SSHConfig, tmp_path: Path) -> None:
    import subprocess

    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    Path(ssh_config.known_hosts).write_text(f"[127.0.0.1]:{ssh_config.port} {kind} {b64}\n")
    for accept in (False, True):
        cfg = SSHConfig(**{**ssh_config.__dict__, "accept_new_host_keys": accept})
        with pytest.raises(HostKeyRefused, match="CHANGED"):
            SSHTransport(cfg).ping()


def test_unreachable_host_is_one_line_error(ssh_config: SSHConfig) -> None:
    cfg = SSHConfig(**{**ssh_config.__dict__, "port": 1, "connect_timeout": 2})
    with pytest.raises(HostUnreachable, match="local: cannot reach root@127.0.0.1:1"):
        SSHTransport(cfg).ping()


def test_reconnects_after_the_connection_drops(ssh: SSHTransport) -> None:
    ssh.ping()
    ssh.connect().close()  # simulate a dropped connection
    ssh.ping()


def test_connection_sends_small_packets_at_once_and_acknowledges_promptly(ssh: SSHTransport) -> None:
    """Without these options every first command on a connection waited ~45 ms for a delayed ACK."""
    import socket

    ssh.ping()
    sock = ssh.connect().sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    if hasattr(socket, "TCP_QUICKACK"):
        from q7x2_deploy.transport.ssh import _PromptAckSocket

        assert isinstance(sock, _PromptAckSocket)
    ssh.close()
    ssh.ping()  # a fresh connection through the same path still works


def test_the_identity_file_is_parsed_once_per_version(ssh_config: SSHConfig, monkeypatch) -> None:
    from q7x2_deploy.transport import connect

    monkeypatch.setattr(connect, "_IDENTITIES", {})
    parsed: list[str] = []
    real = paramiko.PKey.from_path
    monkeypatch.setattr(paramiko.PKey, "from_path", staticmethod(lambda p, password=None: (parsed.append(str(p)), real(p, password))[1]))
    for _ in range(3):
        t = SSHTransport(ssh_config)
        assert t.run(["true"], timeout=30).ok
        t.close()
    assert parsed == [str(ssh_config.identity)]
    # A rewritten key file (same key, new version) is read again.
    identity = Path(str(ssh_config.identity))
    identity.write_bytes(identity.read_bytes())
    os.utime(identity, ns=(1, 1))
    t = SSHTransport(ssh_config)
    t.ping()
    t.close()
    assert len(parsed) == 2


def test_run_reads_large_stdout_and_stderr_together_with_no_thread(ssh: SSHTransport, monkeypatch) -> None:
    """One thread reads both streams: far more than an SSH window (2 MiB) on each, interleaved,
    arrives whole, and a command without input starts no thread of its own."""
    ssh.ping()
    started: list[object] = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self), real_start(self))[1])
    script = "i=0; while [ $i -lt 40 ]; do head -c 100000 /dev/zero; head -c 100000 /dev/zero >&2; i=$((i+1)); done"
    r = ssh.run(["sh", "-c", script], timeout=60)
    assert (r.exit_status, len(r.stdout), len(r.stderr)) == (0, 4_000_000, 4_000_000)
    assert started == []
    r = ssh.run(["sh", "-c", "echo last; exec >&-; echo gone >&2; exit 5"], timeout=30)  # stdout closed first
    assert (r.exit_status, r.stdout, r.stderr) == (5, "last\n", "gone\n")


def test_run_timeout_reading_output(ssh: SSHTransport) -> None:
    with pytest.raises(DeployError, match="did not finish within"):
        ssh.run(["sh", "-c", "echo started; sleep 5"], timeout=0.5)


def test_logins_negotiate_aes_gcm(ssh: SSHTransport) -> None:
    t = ssh.connect()
    assert t.remote_cipher == t.local_cipher == "aes128-gcm@openssh.com"
    assert t.sock.gettimeout() == 1.0  # the reader thread's wake-up period
    assert ssh.run(["echo", "ok"]).stdout == "ok\n"


def test_aead_ciphers_come_first_and_nothing_else_changes() -> None:
    import socket

    from q7x2_deploy.transport.connect import AEAD_CIPHERS, _client_transport

    a, b = socket.socketpair()
    try:
        t = _client_transport(a)
        default = paramiko.Transport(b)
        got = tuple(t.get_security_options().ciphers)
        assert got[:2] == AEAD_CIPHERS
        assert sorted(got) == sorted(default.get_security_options().ciphers)  # the same set, reordered
        assert [c for c in got if c not in AEAD_CIPHERS] == [c for c in default.get_security_options().ciphers
                                                              if c not in AEAD_CIPHERS]
        c, d = socket.socketpair()
        disabled = _client_transport(c, disabled_algorithms={"ciphers": ["aes128-gcm@openssh.com"]})
        assert disabled.preferred_ciphers[0] == "aes256-gcm@openssh.com"  # a disabled one stays out
        c.close()
        d.close()
    finally:
        a.close()
        b.close()
