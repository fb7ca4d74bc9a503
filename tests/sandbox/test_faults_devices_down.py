"""Simulated Ascend devices, fault injection and a clean `down`, on a sandbox of its own.

These tests power hosts off and tear the sandbox down, so they never touch the shared
session cluster: they bring up a second sandbox with another name and subnet.
"""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import paramiko
import pytest

from tests import isolation

from q7x2_deploy.sandbox import cluster, registry
from q7x2_deploy.image.base_image import BASE_IMAGE
from q7x2_deploy.sandbox.config import SandboxConfig
from tests.sandbox_fixture import SandboxCluster, cluster_from_status

pytestmark = pytest.mark.sandbox

NAME, SUBNET = isolation.sandbox("q7x2t", "10.213.8.0/24")


@pytest.fixture(scope="module")
def drill() -> SandboxCluster:
    if os.geteuid() != 0:
        pytest.skip("the sandbox cluster needs root")
    cfg = SandboxConfig(name=NAME, subnet=SUBNET)
    cluster.down(cfg, log=lambda _m: None)  # leftovers of an interrupted run
    try:
        cluster.up(cfg, 2, ascend_devices=2, inventory=cfg.state_dir / "inventory.sandbox.yaml",
                   load_base_image=True, with_sample=False, log=print)
        yield cluster_from_status(cluster.status(cfg))
    finally:
        cluster.down(cfg, log=print)


def test_simulated_devices_work_in_a_container(drill):
    rc, out, err = drill.ssh(0, f"docker run --rm --device /dev/davinci0 --device /dev/davinci_manager "
                                f"--device /dev/devmm_svm --device /dev/hisi_hdc {BASE_IMAGE} "
                                "sh -c 'ls /dev/davinci0 /dev/davinci_manager /dev/devmm_svm /dev/hisi_hdc "
                                "&& echo x > /dev/davinci0 && stat -c %t:%T /dev/davinci0'")
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == "1:3"
    rc, out, _ = drill.ssh(0, "ls /dev/ | grep -c '^davinci[0-9]'")
    assert out.strip() == "2"


def test_driver_files_exist_on_the_host_only(drill):
    paths = ["/usr/local/Ascend/driver", "/usr/local/Ascend/firmware", "/usr/local/Ascend/add-ons",
             "/usr/local/sbin/npu-smi", "/usr/bin/hccn_tool", "/var/log/npu/conf/slog/slog.conf"]
    rc, _, err = drill.ssh(1, "ls -d " + " ".join(paths))
    assert rc == 0, err
    rc, _, err = drill.ssh(1, f"docker run --rm -v /usr/local/Ascend/driver:/usr/local/Ascend/driver "
                              f"{BASE_IMAGE} cat /usr/local/Ascend/driver/version.info")
    assert rc == 0, err
    # the machine itself is untouched
    for p in [*paths, "/dev/davinci0", "/dev/hisi_hdc"]:
        assert not os.path.exists(p), p


def test_cut_and_heal(drill):
    b = drill.hosts[1]
    cluster.cut(SandboxConfig(NAME, SUBNET), b.name, log=print)
    probe = f"timeout 5 bash -c 'echo > /dev/tcp/{b.address}/22' && echo open || echo closed"
    try:
        assert drill.ssh(0, probe)[1].strip() == "closed"
        with pytest.raises((OSError, paramiko.SSHException)):  # refused, timed out or cut mid-banner
            drill.ssh(1, "true")
        # the host itself keeps running: a network loss, not a power loss
        assert cluster.status(SandboxConfig(NAME, SUBNET))["hosts"][1]["engine"]
    finally:
        cluster.heal(SandboxConfig(NAME, SUBNET), b.name, log=print)
    assert drill.ssh(0, probe)[1].strip() == "open"
    assert drill.ssh(1, "hostname")[1].strip() == b.name


def test_stop_kills_everything_and_start_keeps_identity(drill):
    cfg = SandboxConfig(NAME, SUBNET)
    b = drill.hosts[1]
    rc, _, err = drill.ssh(1, f"docker run -d --name sleeper {BASE_IMAGE} sleep 600 && echo kept > /data/disk")
    assert rc == 0, err
    cluster.stop(cfg, b.name, log=print)
    s = cluster.status(cfg)["hosts"][1]
    assert not s["running"] and not s["sshd"] and not s["engine"]
    leftovers = subprocess.run(["pgrep", "-f", str(drill.host_dir(1))], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
    with pytest.raises((OSError, paramiko.SSHException)):  # refused, timed out or cut mid-banner
        drill.ssh(1, "true")
    cluster.start(cfg, b.name, log=print)
    # the same host key (strict known_hosts check), hostname, disks and images
    rc, out, err = drill.ssh(1, "hostname; cat /data/disk; docker ps -q --filter name=sleeper | wc -l; "
                                f"docker image inspect -f ok {BASE_IMAGE}")
    assert rc == 0, err
    assert out.split() == [b.name, "kept", "0", "ok"]
    drill.ssh(1, "docker rm -f sleeper")


def test_second_up_is_idempotent_and_status_json(drill, capsys):
    from q7x2_deploy import cli

    cfg = SandboxConfig(NAME, SUBNET)
    before = cluster.status(cfg)
    cluster.up(cfg, 1, ascend_devices=2, inventory=drill.inventory, with_sample=False, log=print)
    after = cluster.status(cfg)
    assert len(after["hosts"]) == 2  # asking for fewer hosts keeps the ones that are up
    assert [h["address"] for h in after["hosts"]] == [h["address"] for h in before["hosts"]]
    capsys.readouterr()
    assert cli.main(["sandbox", "--name", NAME, "status", "--json"]) == 0
    import json

    s = json.loads(capsys.readouterr().out)
    assert s["registry"]["alive"] and all(h["sshd"] and h["engine"] for h in s["hosts"])


def _mount_points() -> list[str]:
    return [l.split()[4] for l in Path("/proc/self/mountinfo").read_text().splitlines()]


def test_down_leaves_nothing_behind(drill):
    cfg = SandboxConfig(NAME, SUBNET)
    inventory = drill.inventory
    cluster.down(cfg, log=print)
    cluster.down(cfg, log=print)  # idempotent
    assert not any(n.startswith(f"{NAME}-") for n in os.listdir("/run/netns")) if os.path.isdir("/run/netns") else True
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{NAME}-" not in links
    procs = subprocess.run(["pgrep", "-af", str(cfg.state_dir)], capture_output=True, text=True).stdout
    assert procs.strip() == ""
    assert not [m for m in _mount_points() if str(cfg.state_dir) in m]
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    assert cfg.iptables_comment not in rules
    assert not registry.certs_d_file(cfg).exists()
    assert not cfg.state_dir.exists()
    assert not inventory.exists()
    assert not glob.glob(f"/sys/fs/cgroup/*/{NAME}-sbx-*")
