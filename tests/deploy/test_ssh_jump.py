"""ProxyJump against real sshd: a host reached only through a jump host, both host keys checked."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy_sshd import LocalSSHD, start_sshd
from q7x2_deploy.transport.factory import ssh_factory
from q7x2_deploy.plan import HostPlan
from q7x2_deploy.transport.hostkeys import HostKeyRefused


@pytest.fixture(scope="module")
def bastion(tmp_path_factory: pytest.TempPathFactory, sshd: LocalSSHD) -> Iterator[LocalSSHD]:
    server = start_sshd(tmp_path_factory.mktemp("bastion"))
    yield server
    server.stop()


def _ssh_config(tmp: Path, target: LocalSSHD, bastion: LocalSSHD, known: Path) -> Path:
    path = tmp / "ssh_config"
    path.write_text(
        f"Host bastion\n  HostName 127.0.0.1\n  Port {bastion.port}\n  IdentityFile {bastion.identity}\n"
        f"  UserKnownHostsFile {known}\n\n"
        f"Host node-behind\n  HostName 127.0.0.1\n  Port {target.port}\n  ProxyJump bastion\n"
        f"  IdentityFile {target.identity}\n  UserKnownHostsFile {known}\n"
    )
    return path


def _host(config: Path) -> HostPlan:
    return HostPlan(name="n1", address="node-behind", node_rank=0, ssh={"config": str(config)}, env={},
                    job_file="/tmp/job.json", docker_run=[])


def _our_connections_to(port: int) -> int:
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(f"pid={os.getpid()}," in line for line in out.splitlines())


def test_a_command_runs_through_the_jump_host(tmp_path: Path, sshd: LocalSSHD, bastion: LocalSSHD) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line() + bastion.known_hosts_line())
    t = ssh_factory(ssh_config=None)(_host(_ssh_config(tmp_path, sshd, bastion, known)))
    try:
        assert t.check(["echo", "through the bastion"]).stdout == "through the bastion\n"
        assert t.login == f"root@127.0.0.1:{sshd.port} via root@127.0.0.1:{bastion.port}"
        # The host's connection is a channel of the bastion's: none of ours goes to it directly.
        assert _our_connections_to(bastion.port) == 1 and _our_connections_to(sshd.port) == 0
    finally:
        t.close()
    assert _our_connections_to(bastion.port) == 0  # the last transport out closes the jump connection


def test_hosts_behind_one_bastion_share_one_connection_to_it(tmp_path: Path, sshd: LocalSSHD, bastion: LocalSSHD) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line() + bastion.known_hosts_line())
    config = _ssh_config(tmp_path, sshd, bastion, known)
    make = ssh_factory(ssh_config=str(config))  # --ssh-config: the host names no config of its own
    hosts = [HostPlan(name=f"n{i}", address="node-behind", node_rank=i, ssh={}, env={},
                      job_file="/tmp/job.json", docker_run=[]) for i in range(3)]
    transports = [make(h) for h in hosts]
    try:
        for t in transports:
            t.ping()
        assert _our_connections_to(bastion.port) == 1
    finally:
        for t in transports:
            t.close()


def test_an_unknown_jump_host_key_is_refused_then_accepted_on_request(tmp_path: Path, sshd: LocalSSHD, bastion: LocalSSHD) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())  # the host is known, the bastion is not
    host = _host(_ssh_config(tmp_path, sshd, bastion, known))
    t = ssh_factory()(host)
    with pytest.raises(HostKeyRefused, match=r"^n1: jump host bastion: unknown host key for \[127.0.0.1\]:\d+ .*--accept-new-host-keys"):
        t.ping()
    t.close()
    t = ssh_factory(accept_new_host_keys=True)(host)
    t.ping()
    t.close()
    assert bastion.known_hosts_line().split()[1] in known.read_text().splitlines()[-1]


def test_a_changed_key_behind_the_jump_host_is_refused(tmp_path: Path, sshd: LocalSSHD, bastion: LocalSSHD) -> None:
    known = tmp_path / "known_hosts"
    # The host's entry carries the bastion's key: to us the host's key has changed.
    wrong = sshd.known_hosts_line().split()[0] + " " + " ".join(bastion.known_hosts_line().split()[1:]) + "\n"
    known.write_text(wrong + bastion.known_hosts_line())
    t = ssh_factory(accept_new_host_keys=True)(_host(_ssh_config(tmp_path, sshd, bastion, known)))
    with pytest.raises(HostKeyRefused, match=r"^n1: host key for \[127.0.0.1\]:\d+ CHANGED"):
        t.ping()
    t.close()


def test_a_jump_host_that_cannot_reach_the_host_names_both(tmp_path: Path, sshd: LocalSSHD, bastion: LocalSSHD) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(bastion.known_hosts_line())
    config = tmp_path / "ssh_config"
    config.write_text(f"Host bastion\n  HostName 127.0.0.1\n  Port {bastion.port}\n  IdentityFile {bastion.identity}\n"
                      f"  UserKnownHostsFile {known}\nHost gone\n  HostName 127.0.0.1\n  Port 1\n  ProxyJump bastion\n")
    host = HostPlan(name="n1", address="gone", node_rank=0, ssh={"config": str(config)}, env={},
                    job_file="/tmp/job.json", docker_run=[])
    t = ssh_factory()(host)
    with pytest.raises(Exception, match=r"^n1: jump host bastion \(root@127.0.0.1:\d+\) could not connect to 127.0.0.1:1"):
        t.run(["true"])
    t.close()


def test_without_an_identity_the_agents_keys_log_in(tmp_path: Path, sshd: LocalSSHD, bastion: LocalSSHD,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"])
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        # Both servers accept their own client key only: the agent holds both, no file is named.
        for key in (sshd.identity, bastion.identity):
            subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
        known = tmp_path / "known_hosts"
        known.write_text(sshd.known_hosts_line() + bastion.known_hosts_line())
        config = tmp_path / "ssh_config"
        config.write_text(f"Host bastion\n  HostName 127.0.0.1\n  Port {bastion.port}\n  UserKnownHostsFile {known}\n"
                          f"Host node-behind\n  HostName 127.0.0.1\n  Port {sshd.port}\n  ProxyJump bastion\n"
                          f"  UserKnownHostsFile {known}\n")
        t = ssh_factory()(_host(config))
        try:
            assert t.check(["echo", "agent"]).stdout == "agent\n"
        finally:
            t.close()
        monkeypatch.delenv("SSH_AUTH_SOCK")
        t = ssh_factory()(_host(config))
        with pytest.raises(Exception, match=r"^n1: jump host bastion: SSH login to root@127.0.0.1:\d+: no key to offer"):
            t.run(["true"])
        t.close()
    finally:
        agent.terminate()
        agent.wait(timeout=10)
