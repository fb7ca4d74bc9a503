"""Sandbox pieces that need neither root nor namespaces."""

from __future__ import annotations

import argparse

import pytest

from q7x2_runtime.errors import UserError

from q7x2_deploy.image import base_image
from q7x2_deploy.sandbox import inventory_file
from q7x2_deploy.sandbox.config import SandboxConfig


def test_mirror_from_deb822_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    assert base_image.apt_mirror(etc=tmp_path) == "http://mirror.invalid/debian"


def test_mirror_from_one_line_sources(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb [arch=amd64] http://other.invalid/x bookworm-security main\n"
        "deb http://mirror.invalid/debian bookworm main contrib\n")
    assert base_image.apt_mirror(etc=tmp_path) == "http://mirror.invalid/debian"


def test_no_mirror_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no Debian bookworm main mirror"):
        base_image.apt_mirror(etc=tmp_path)


@pytest.mark.parametrize("name", ["", "Q7", "a-b", "toolongname", "9a"])
def test_bad_names_are_refused(name):
    with pytest.raises(UserError):
        SandboxConfig(name=name)


@pytest.mark.parametrize("subnet", ["8.8.8.0/24", "10.0.0.0/30", "nonsense", "fd00::/64"])
def test_only_private_ipv4_subnets(subnet):
    with pytest.raises(UserError):
        SandboxConfig(subnet=subnet)


def test_names_fit_interface_limits():
    cfg = SandboxConfig(name="abcdefgh")
    h = cfg.host(64)
    for ifname in (cfg.bridge, h.veth_root, h.veth_peer_tmp):
        assert len(ifname) <= 15
    assert cfg.host(1).address == "10.213.7.11"
    assert cfg.registry_address == "10.213.7.1:5000"


def test_inventory_has_dp_multiple_batch_and_shared_paths():
    cfg = SandboxConfig()
    inv = inventory_file.build(cfg, 3, npus_per_node=2)
    dp = 3 * 2
    assert inv["job"]["training"]["global_batch_size"] % dp == 0
    assert all(p.startswith("/shared/") for p in inv["job"]["paths"].values())
    assert inv["container"]["devices"] == 0 and inv["image"]["flavor"] == "cpu"
    assert [h["name"] for h in inv["hosts"]] == ["sbx-1", "sbx-2", "sbx-3"]


def test_cli_registers_sandbox_subcommands():
    from q7x2_deploy.sandbox import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sandbox", "up", "2", "--ascend-devices", "16"])
    assert args.hosts == 2 and args.ascend_devices == 16 and callable(args.func)
    args = parser.parse_args(["sandbox", "ssh", "sbx-1", "docker", "ps", "-a"])
    assert args.remote_command == ["docker", "ps", "-a"] and args.command == "sandbox"
    for sub in (["down"], ["status", "--json"], ["cut", "sbx-1"], ["heal", "sbx-1"], ["stop", "sbx-2"], ["start", "sbx-2"]):
        assert callable(parser.parse_args(["sandbox", *sub]).func)


def test_refuses_without_root(monkeypatch):
    from q7x2_deploy.sandbox import cluster

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(UserError, match="needs root"):
        cluster.up(SandboxConfig(name="nope"), 1)


def test_missing_package_names_the_apt_line(monkeypatch):
    from q7x2_deploy.sandbox import sysutil

    monkeypatch.setattr(sysutil, "which", lambda b: None if b in ("sshd", "docker-registry") else "/bin/true")
    with pytest.raises(UserError, match=r"apt-get install -y docker-registry openssh-server"):
        sysutil.require_binaries()


def test_cli_error_is_one_line(monkeypatch, capsys):
    from q7x2_deploy import cli

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert cli.main(["sandbox", "--name", "nope", "up", "1"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs root" in err


def test_bastion_ssh_config_routes_every_host_through_the_bastion(tmp_path):
    from q7x2_deploy.inventory import Inventory
    from q7x2_deploy.sandbox import ssh_config_file
    from q7x2_deploy.ssh_route import ClientConfig, resolve

    cfg = SandboxConfig(name="t", subnet="10.213.99.0/24", root=tmp_path)
    cfg.identity.parent.mkdir(parents=True)
    cfg.identity.write_text("a key file (ssh skips configured files that do not exist)")
    parsed = ClientConfig.from_text(ssh_config_file.render(cfg, 2), cfg.ssh_config)
    jump = cfg.bastion()
    assert (jump.address, jump.netns, jump.veth_root) == ("10.213.99.10", "t-sbx-0", "t-v0")
    data = inventory_file.build(cfg, 2, bastion=True)
    inv = Inventory.model_validate({**data, "job": {}})  # the job's files are the sample's, not made here
    assert data["ssh"] == {"config": str(cfg.ssh_config)}
    for i, host in enumerate(inv.hosts, start=1):
        for name in (host.address, cfg.host(i).name):  # by address (the inventory) or by name (a person)
            route = resolve(name, inv.ssh_target(host).model_dump(), parsed)
            assert route.target.login == f"root@10.213.99.{10 + i}:22"
            assert route.target.identities == (str(cfg.identity),) and route.target.known_hosts == (str(cfg.known_hosts),)
            assert [j.login for j in route.jumps] == ["root@10.213.99.10:22"]
            assert route.jumps[0].known_hosts == (str(cfg.known_hosts),)
    assert resolve(jump.name, {}, parsed).jumps == ()  # the bastion itself is reached directly
