"""The HCCL network preflight's pure parts, and the sandbox hccn_tool stand-in speaking the
formats the real tool prints (hccn_tool -i N -ip -g / -ping -g address IP, /etc/hccn.conf)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from q7x2_deploy.executor.npu_network import (
    PingResult,
    PingTarget,
    device_ips,
    duplicate_ips,
    judge_device_ips,
    judge_pings,
    parse_hccn_conf,
    parse_ping,
    ping_targets,
)
from q7x2_deploy.executor.preflight import _port_check, interface_for
from q7x2_deploy.plan import HostPlan, build_plan
from q7x2_deploy.sandbox import ascend

from tests.foundation.test_validation import edited
from q7x2_deploy.validation import validate_data

CONF = "address_0=10.0.0.11\nnetmask_0=255.255.255.0\nnetdetect_0=10.0.0.1\naddress_1=10.0.0.12\nnetmask_1=255.255.255.0\n"
PING_OK = ("device 0 PING 10.0.0.21 recv seq=0,time=0.181000ms recv seq=1,time=0.055000ms "
           "recv seq=2,time=0.048000ms 3 packets transmitted, 3 received, 0.00% packet loss")
PING_LOST = "device 0 PING 10.0.0.21 recv time out seq=0 recv time out seq=1 recv time out seq=2 3 packets transmitted, 0 received, 100.00% packet loss"


def test_device_ips_against_hccn_conf() -> None:
    assert parse_hccn_conf(CONF) == {0: "10.0.0.11", 1: "10.0.0.12"}
    lines = ["0 0 ipaddr:10.0.0.11 netmask:255.255.255.0 ", "1 0 ipaddr:10.0.0.19 netmask:255.255.255.0 "]
    assert device_ips(lines) == {0: "10.0.0.11", 1: "10.0.0.19"}
    check, ips = judge_device_ips(lines, CONF.splitlines(), [0, 1])
    assert (check.level, check.detail) == ("fail", "NPU 1 has device IP 10.0.0.19 but /etc/hccn.conf says 10.0.0.12")
    assert judge_device_ips(lines[:1], CONF.splitlines(), [0])[0].level == "ok"
    missing = judge_device_ips(["0 1 Cmd execute failed! "], CONF.splitlines(), [0])[0]
    assert (missing.level, missing.detail) == ("fail", "NPU 0 has no device IP (hccn_tool -i 0 -ip -g: Cmd execute failed!)")
    assert judge_device_ips(lines[:1], None, [0])[0].level == "warn"  # no hccn.conf to compare with


def test_duplicate_device_ips_name_both_ends() -> None:
    dup = duplicate_ips({"a": {0: "10.0.0.1", 1: "10.0.0.2"}, "b": {0: "10.0.0.1", 1: "10.0.0.3"}})
    assert dup == {"a": ["NPU 0 device IP 10.0.0.1 is also b NPU 0's"], "b": ["NPU 0 device IP 10.0.0.1 is also a NPU 0's"]}
    assert duplicate_ips({"a": {0: "10.0.0.1"}, "b": {0: "10.0.0.2"}}) == {}


def test_ping_matrix_targets_and_verdicts() -> None:
    npus = {"a": [0, 1], "b": [8, 9], "c": [0]}
    ips = {"a": {0: "10.0.0.10", 1: "10.0.0.11"}, "b": {8: "10.0.1.18", 9: "10.0.1.19"}, "c": {0: "10.0.2.10"}}
    assert ping_targets("a", npus, ips) == [PingTarget(0, "b", 8, "10.0.1.18"), PingTarget(0, "c", 0, "10.0.2.10"),
                                            PingTarget(1, "b", 9, "10.0.1.19")]
    assert parse_ping(PING_OK) == (3, 3) and parse_ping(PING_LOST) == (3, 0) and parse_ping("garbage") == (0, 0)
    good = PingResult(PingTarget(0, "b", 8, "10.0.1.18"), 3, 3, "3 of 3 replies")
    lost = PingResult(PingTarget(1, "b", 9, "10.0.1.19"), 3, 0, "0 of 3 replies")
    assert judge_pings("a", ips["a"], [good]).level == "ok"
    bad = judge_pings("a", ips["a"], [good, lost])
    assert (bad.level, bad.detail) == ("fail", "unreachable: NPU 1 (10.0.0.11) -> b NPU 9 (10.0.1.19): 0 of 3 replies")


def test_the_interface_that_carries_the_address() -> None:
    ip_addr = ["1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever",
               "2: eth0@if7    inet 10.213.9.2/24 brd 10.213.9.255 scope global eth0\\       valid_lft forever",
               "3: ib0    inet6 fd00::5/64 scope global \\       valid_lft forever"]
    assert interface_for("10.213.9.2", [], ip_addr) == "eth0"
    assert interface_for("node-a.example", ["fd00::5"], ip_addr) == "ib0"
    assert interface_for("10.213.9.3", [], ip_addr) is None


def _host(npus: list[int], env: dict[str, str] | None = None) -> HostPlan:
    return HostPlan(name="a", address="10.0.0.1", node_rank=0, ssh={}, env=env or {}, job_file="/j/job.json",
                    docker_run=[], npus=npus)


def test_hccl_and_master_ports_must_be_free() -> None:
    assert _port_check(_host([0, 1]), set(), 6000).detail == "master port 6000, HCCL ports 60000-60001 free"
    taken = _port_check(_host([0, 1], {"HCCL_IF_BASE_PORT": "50000"}), {50001}, None)
    assert (taken.level, taken.detail) == ("fail", "already in use: HCCL port 50001 (of 50000-50001; see HCCL_IF_BASE_PORT)")
    assert _port_check(_host([]), set(), None).level == "skip"
    assert _port_check(_host([]), {6000}, 6000).detail == "already in use: master port 6000"


def test_a_host_without_nic_is_pinned_to_the_detected_interface_at_up() -> None:
    data = edited()
    del data["hosts"][1]["nic"]
    inv, violations = validate_data(data)
    assert not violations and inv is not None
    plan = build_plan(inv)
    a, b = plan.hosts
    assert (a.detect_nic, b.detect_nic) == (False, True) and "GLOO_SOCKET_IFNAME" not in b.env
    pinned = plan.with_nics({"npu-b": "eth7", "npu-a": "ignored"})
    pa, pb = pinned.hosts
    assert pa == a  # it has its nic
    assert pb.env["GLOO_SOCKET_IFNAME"] == pb.env["HCCL_SOCKET_IFNAME"] == "eth7" and not pb.detect_nic
    for before, after in zip(b.steps, pb.steps):
        assert after.argv == before.argv and after.docker_run[-len(after.argv) - 1] == plan.image_ref
        # derived again from the pinned env: every option still precedes the image
        options = after.docker_run[:-len(after.argv) - 1]
        assert "GLOO_SOCKET_IFNAME=eth7" in options and "HCCL_SOCKET_IFNAME=eth7" in options
        assert options == plan.with_docker_run(pb).step(after.name).docker_run[:-len(after.argv) - 1]  # type: ignore[union-attr]
    assert pb.docker_run[-1] == plan.image_ref and "HCCL_SOCKET_IFNAME=eth7" in pb.docker_run


def test_sandbox_hccn_tool_speaks_the_real_formats(tmp_path: Path) -> None:
    faults, tool = tmp_path / "faults", tmp_path / "hccn_tool"
    tool.write_text(ascend._HCCN_TOOL.format(faults=faults, net=ascend.DEVICE_NET).replace("/etc/hccn.conf", str(tmp_path / "hccn.conf")))
    tool.chmod(0o755)
    (tmp_path / "hccn.conf").write_text(ascend.hccn_conf(2, 4))

    def run(*args: str) -> str:
        return subprocess.run([str(tool), *args], capture_output=True, text=True).stdout

    assert run("-i", "3", "-ip", "-g") == f"ipaddr:{ascend.device_ip(2, 3)}\nnetmask:255.255.0.0\n"
    assert parse_hccn_conf((tmp_path / "hccn.conf").read_text())[3] == ascend.device_ip(2, 3)
    peer = ascend.device_ip(1, 3)
    assert parse_ping(run("-i", "3", "-ping", "-g", "address", peer)) == (3, 3)
    assert run("-i", "3", "-ping", "-g", "address", peer).startswith(f"device 3 PING {peer}\nrecv seq=0,time=")
    assert parse_ping(run("-i", "3", "-ping", "-g", "address", "192.0.2.1")) == (3, 0)  # no NPU there
    faults.write_text(f"unreachable {peer}\nip 1 10.9.9.9\n")
    assert parse_ping(run("-i", "3", "-ping", "-g", "address", peer)) == (3, 0)
    assert "recv time out seq=2" in run("-i", "3", "-ping", "-g", "address", peer)
    assert run("-i", "1", "-ip", "-g").startswith("ipaddr:10.9.9.9\n")
    assert run("-i", "9", "-ip", "-g") == "Cmd execute failed!\n"
