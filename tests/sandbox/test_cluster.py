"""The sandbox cluster behaves like real hosts: SSH, own engines, storage, network, registry."""

from __future__ import annotations

import io
import tarfile
import uuid

import docker
import paramiko
import pytest

from q7x2_deploy.image.base_image import BASE_IMAGE

pytestmark = pytest.mark.sandbox


def _tiny_image_tar(marker: str) -> bytes:
    """A one-file root filesystem, importable with `docker import` (no registry, no base)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = marker.encode()
        info = tarfile.TarInfo("marker")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def pushed_base(sandbox_cluster) -> str:
    """The base image pushed from the root engine to the sandbox registry."""
    root = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=600)
    ref = f"{sandbox_cluster.registry}/q7x2/debian-python"
    root.images.get(BASE_IMAGE).tag(ref, "bookworm")
    for line in root.images.push(ref, "bookworm", stream=True, decode=True):
        assert "error" not in line, line
    return f"{ref}:bookworm"


def test_ssh_login_with_known_host_keys_and_own_hostnames(sandbox_cluster):
    names = []
    for i, h in enumerate(sandbox_cluster.hosts):
        rc, out, _ = sandbox_cluster.ssh(i, "hostname")
        assert rc == 0
        names.append(out.strip())
        assert out.strip() == h.name
    assert len(set(names)) == len(names)


def test_unknown_host_key_is_rejected(sandbox_cluster, tmp_path):
    client = paramiko.SSHClient()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    client.load_host_keys(str(empty))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        client.connect(sandbox_cluster.hosts[0].address, username="root",
                       key_filename=str(sandbox_cluster.identity), look_for_keys=False, allow_agent=False,
                       timeout=10)
    client.close()


def test_each_host_sees_its_own_engine(sandbox_cluster):
    tag = f"q7x2-test/marker:{uuid.uuid4().hex[:12]}"
    repo, t = tag.split(":")
    engine = sandbox_cluster.engine(0)
    try:
        engine.api.import_image_from_data(_tiny_image_tar(tag), repository=repo, tag=t)
        rc, out0, _ = sandbox_cluster.ssh(0, "docker images --format '{{.Repository}}:{{.Tag}}'; docker info --format '{{.Name}}'")
        rc1, out1, _ = sandbox_cluster.ssh(1, "docker images --format '{{.Repository}}:{{.Tag}}'; docker info --format '{{.Name}}'")
        assert rc == 0 and rc1 == 0
        assert tag in out0.split()
        assert tag not in out1.split()
        # the engine's name is the host's hostname: each engine runs in its host's UTS namespace
        assert out0.split()[-1] == sandbox_cluster.hosts[0].name
        assert out1.split()[-1] == sandbox_cluster.hosts[1].name
        # and none of it is in the machine's own engine
        root = docker.DockerClient(base_url="unix:///var/run/docker.sock")
        with pytest.raises(docker.errors.ImageNotFound):
            root.images.get(tag)
    finally:
        engine.images.remove(tag, force=True)


def test_data_is_private_and_shared_is_shared(sandbox_cluster):
    token = uuid.uuid4().hex
    assert sandbox_cluster.ssh(0, f"echo {token} > /data/private-{token} && echo {token} > /shared/common-{token}")[0] == 0
    try:
        assert sandbox_cluster.ssh(1, f"test -e /data/private-{token}")[0] != 0
        rc, out, _ = sandbox_cluster.ssh(1, f"cat /shared/common-{token}")
        assert rc == 0 and out.strip() == token
        assert (sandbox_cluster.shared_dir / f"common-{token}").read_text().strip() == token
        assert (sandbox_cluster.data_dir(0) / f"private-{token}").exists()
        assert not (sandbox_cluster.data_dir(1) / f"private-{token}").exists()
    finally:
        sandbox_cluster.ssh(0, f"rm -f /data/private-{token} /shared/common-{token}")


def test_sample_data_on_shared_and_every_data(sandbox_cluster):
    for i in range(len(sandbox_cluster.hosts)):
        rc, out, err = sandbox_cluster.ssh(i, "ls /shared/sample/model/config.json /data/sample/data/alpaca.parquet")
        assert rc == 0, err


def test_registry_push_on_machine_pull_on_host(sandbox_cluster, pushed_base):
    rc, out, err = sandbox_cluster.ssh(1, f"docker pull {pushed_base}")
    assert rc == 0, err
    rc, out, err = sandbox_cluster.ssh(1, f"docker run --rm {pushed_base} python3 -c 'print(6*7)'")
    assert rc == 0 and out.strip() == "42", err


def test_host_network_containers_talk_across_hosts(sandbox_cluster, pushed_base):
    b = sandbox_cluster.hosts[1]
    name = f"q7x2-test-srv-{uuid.uuid4().hex[:8]}"
    server = ("import socket,time;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
              "s.bind(('0.0.0.0',7719));s.listen();s.settimeout(60);c,_=s.accept();"
              "c.sendall(socket.gethostname().encode());c.close()")
    client = ("import socket,time\nfor _ in range(50):\n try:\n  c=socket.create_connection(('%s',7719),timeout=2);"
              "print(c.recv(64).decode());break\n except OSError: time.sleep(0.2)" % b.address)
    for i in (0, 1):
        assert sandbox_cluster.ssh(i, f"docker pull -q {pushed_base}")[0] == 0
    rc, _, err = sandbox_cluster.ssh(1, f"docker run -d --name {name} --network host {pushed_base} python3 -c \"{server}\"")
    assert rc == 0, err
    try:
        rc, out, err = sandbox_cluster.ssh(0, f"docker run --rm --network host {pushed_base} python3 -c \"{client}\"")
        assert rc == 0, err
        assert out.strip() == b.name  # the container on host B answered with B's hostname
    finally:
        sandbox_cluster.ssh(1, f"docker rm -f {name}")


def test_inventory_describes_the_sandbox(sandbox_cluster):
    import yaml

    inv = yaml.safe_load(sandbox_cluster.inventory.read_text())
    assert [h["address"] for h in inv["hosts"]][: len(sandbox_cluster.hosts)] == [h.address for h in sandbox_cluster.hosts]
    assert inv["ssh"]["identity"] == str(sandbox_cluster.identity)
    assert inv["image"]["repository"].startswith(sandbox_cluster.registry + "/")
    assert inv["container"]["volumes"] == ["/shared", "/data"]
    try:
        from q7x2_deploy.inventory import Inventory
    except ImportError:
        pytest.skip("inventory models not available")
    Inventory.model_validate(inv)
