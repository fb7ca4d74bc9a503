from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from q7x2_deploy.transport import SSHConfig, SSHTransport
from deploy_sshd import LocalSSHD, start_sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSSHD]:
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.skip("openssh-server is not installed")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def ssh_config(sshd: LocalSSHD, tmp_path: Path) -> SSHConfig:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    return SSHConfig(host="local", address="127.0.0.1", port=sshd.port, user="root",
                     identity=str(sshd.identity), known_hosts=str(known))


@pytest.fixture
def ssh(ssh_config: SSHConfig) -> Iterator[SSHTransport]:
    t = SSHTransport(ssh_config)
    yield t
    t.close()
