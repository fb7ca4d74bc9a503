"""The `sandbox_cluster` fixture: a real 2-host sandbox cluster for the whole test session.

Use it from any test module (tests/conftest.py imports it):

    @pytest.mark.sandbox
    def test_something(sandbox_cluster):
        sandbox_cluster.ssh(0, "docker info")          # paramiko, verified host key
        sandbox_cluster.inventory                        # inventory.sandbox.yaml for the deployer

A sandbox already up with at least two healthy hosts is reused and left running; otherwise one
is brought up and torn down at the end of the session, also when tests fail. Skipped only when
not running as root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

SANDBOX_HOSTS = 2


@dataclass
class SandboxHost:
    name: str
    address: str
    nic: str
    engine_socket: str  # the host's /var/run/docker.sock, as seen from the machine


@dataclass
class SandboxCluster:
    name: str
    hosts: list[SandboxHost]
    identity: Path
    known_hosts: Path
    registry: str  # ADDR:PORT, the same for push (root engine) and pull (hosts)
    inventory: Path
    shared_dir: Path  # the hosts' /shared, from the machine
    state_dir: Path

    def host_dir(self, i: int) -> Path:
        return self.state_dir / "hosts" / self.hosts[i].name

    def data_dir(self, i: int) -> Path:
        """Host i's /data, from the machine."""
        return self.host_dir(i) / "data"

    def connect(self, i: int, timeout: float = 10):
        """A paramiko client logged in to host i with strict host key checking."""
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.hosts[i].address, port=22, username="root", key_filename=str(self.identity),
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       look_for_keys=False, allow_agent=False)
        return client

    def ssh(self, i: int, command: str, timeout: float = 120) -> tuple[int, str, str]:
        """Run a shell command on host i over SSH; return (exit code, stdout, stderr)."""
        client = self.connect(i)
        try:
            _, out, err = client.exec_command(command, timeout=timeout)
            rc = out.channel.recv_exit_status()
            return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        finally:
            client.close()

    def engine(self, i: int):
        """A docker SDK client of host i's own engine."""
        import docker

        return docker.DockerClient(base_url=f"unix://{self.hosts[i].engine_socket}", timeout=300)


def cluster_from_status(s: dict) -> SandboxCluster:
    from q7x2_deploy.sandbox.config import SandboxConfig

    cfg = SandboxConfig(name=s["name"], subnet=s["subnet"])
    return SandboxCluster(
        name=s["name"],
        hosts=[SandboxHost(h["name"], h["address"], h["nic"], h["engine_socket"]) for h in s["hosts"]],
        identity=Path(s["identity"]), known_hosts=Path(s["known_hosts"]), registry=s["registry"]["address"],
        inventory=Path(s["inventory"]), shared_dir=Path(s["shared"]), state_dir=cfg.state_dir)


def healthy(s: dict, count: int) -> bool:
    ok = [h for h in s.get("hosts", []) if h["running"] and h["sshd"] and h["engine"] and not h["cut"]]
    sample = bool(s.get("shared")) and (Path(s["shared"]) / "sample" / "model" / "config.json").exists()
    return (bool(s.get("up")) and len(ok) >= count and len(ok) == len(s["hosts"]) and s["registry"]["alive"]
            and sample and bool(s.get("inventory")) and Path(s["inventory"]).exists())


def _live_users(users: Path) -> list[int]:
    alive = []
    for f in users.glob("*"):
        pid = int(f.name) if f.name.isdigit() else 0
        if pid and Path(f"/proc/{pid}").exists():
            alive.append(pid)
        else:
            f.unlink(missing_ok=True)
    return alive


@pytest.fixture(scope="session")
def sandbox_cluster() -> Iterator[SandboxCluster]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox cluster needs root")
    from q7x2_deploy.sandbox import cluster
    from q7x2_deploy.sandbox.config import DEFAULT_NAME

    # Q7X2_SANDBOX_NAME / Q7X2_SANDBOX_SUBNET pick another sandbox than the default one.
    # Q7X2_TEST_SLOT (tests/isolation.py) gives a session a sandbox of its own.
    from tests import isolation
    from q7x2_deploy.sandbox.config import DEFAULT_SUBNET

    name, subnet = isolation.sandbox(DEFAULT_NAME, DEFAULT_SUBNET)
    cfg = cluster.config_for(os.environ.get("Q7X2_SANDBOX_NAME", name),
                             os.environ.get("Q7X2_SANDBOX_SUBNET") or (subnet if isolation.slot() else None))
    # Several test sessions may share the sandbox at once: each registers itself, and the last
    # one out tears down a sandbox that a test session (not a person) brought up.
    users = cfg.state_dir / "test-sessions"
    owned_flag = cfg.state_dir / "brought-up-by-tests"
    me = users / str(os.getpid())
    log = lambda m: print(f"sandbox: {m}")  # noqa: E731
    try:
        with cluster.locked(cfg):
            before = cluster.status(cfg)
            if not before["up"]:
                cfg.state_dir.mkdir(parents=True, exist_ok=True)
                owned_flag.touch()
        if not healthy(before, SANDBOX_HOSTS):
            for h in before.get("hosts", []):
                if h["cut"]:
                    cluster.heal(cfg, h["name"], log=log)
            inventory = Path(before["inventory"]) if before.get("inventory") else cfg.state_dir / "inventory.sandbox.yaml"
            cluster.up(cfg, SANDBOX_HOSTS, inventory=inventory, ascend_devices=before.get("ascend_devices", 0),
                       log=log)
        users.mkdir(parents=True, exist_ok=True)
        me.touch()
        yield cluster_from_status(cluster.status(cfg))
    finally:
        me.unlink(missing_ok=True)
        with cluster.locked(cfg):
            last = not users.exists() or not _live_users(users)
            tear_down = last and owned_flag.exists()
        if tear_down:
            cluster.down(cfg, log=log)
