"""The NPUs a container sees are the NPUs the job uses (issue 19): the default devices, a host's
own choice, ASCEND_RT_VISIBLE_DEVICES, the per-node refusal and the warning otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from q7x2_deploy.inventory import npu_ranges, parse_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.validation import inventory_warnings, validate_data

from tests.foundation.test_validation import BASE, ROOT, edited, messages

BASE_HOST = BASE["hosts"][0]


def _plan(data: dict):  # type: ignore[no-untyped-def]
    inv, violations = validate_data(data)
    assert violations == [] and inv is not None, violations
    return build_plan(inv)


def _devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--device" and argv[i + 1].removeprefix("/dev/davinci").isdigit()]


def test_by_default_a_container_gets_exactly_the_jobs_npus() -> None:
    plan = _plan(edited())
    for h in plan.hosts:
        assert _devices(h.docker_run) == [f"/dev/davinci{i}" for i in range(8)]
        assert h.env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
        assert h.npus == list(range(8))
        for step in h.steps:
            assert "ASCEND_RT_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in step.docker_run


def test_a_host_can_use_the_second_half() -> None:
    plan = _plan(edited(hosts__1__devices=[15, 14, 13, 12, 11, 10, 9, 8]))
    a, b = plan.hosts
    assert _devices(b.docker_run) == [f"/dev/davinci{i}" for i in range(8, 16)]  # ascending: the container numbers them 0..7
    assert b.env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7" and b.npus == list(range(8, 16))
    assert a.npus == list(range(8))


def test_a_privileged_container_names_the_hosts_npus() -> None:
    plan = _plan(edited(container__privileged=True, hosts__1__devices=list(range(8, 16))))
    assert plan.hosts[1].env["ASCEND_RT_VISIBLE_DEVICES"] == "8,9,10,11,12,13,14,15"


def test_the_cpu_flavor_gets_no_npus() -> None:
    plan = _plan(edited(image__flavor="cpu", job__tools={"convert": "q7x2", "preprocess": "q7x2"}))
    assert all(_devices(h.docker_run) == [] and "ASCEND_RT_VISIBLE_DEVICES" not in h.env and h.npus == [] for h in plan.hosts)


def test_more_visible_npus_than_ranks_refuses_per_node_storage() -> None:
    assert messages(edited(container__devices=16, job__storage="per-node")) == [
        "job.storage: per-node storage needs each host's containers to see exactly npus_per_node = 8 NPUs: "
        "MindSpeed-LLM builds a node's dataset on its rank with rank % device_count == 0, one per host only then; "
        "'npu-a' (16 NPUs visible), 'npu-b' (16 NPUs visible, ranks 8-15: none is one) see more; "
        "give those hosts 8 devices or use storage: shared"
    ]
    assert messages(edited(container__devices=8, job__storage="per-node")) == []
    assert messages(edited(hosts__1__devices=list(range(8, 16)), job__storage="per-node")) == []


def test_per_node_storage_refuses_any_host_that_sees_more_npus_than_it_uses() -> None:
    # Host 0 alone sees 16: its rank 0 still builds, but the rule is the same for every host.
    [line] = messages(edited(hosts__0__devices=16, job__storage="per-node"))
    assert line.startswith("job.storage: per-node storage needs") and "'npu-a' (16 NPUs visible) see more" in line


def test_more_visible_npus_than_ranks_only_warns_with_shared_storage() -> None:
    data = edited(container__devices=16)
    assert messages(data) == []
    inv = parse_inventory(data)
    assert [f"{w.dotted}: {w.message}" for w in inventory_warnings(inv)] == [
        "container.devices: containers see more NPUs than the job's npus_per_node = 8 ranks per host; each rank takes "
        "NPU rank % device_count, so 'npu-a' uses NPU 0-7 of 16; 'npu-b' uses NPU 8-15 of 16; set devices to the 8 NPUs to use"
    ]
    plan = build_plan(inv)
    assert [h.npus for h in plan.hosts] == [list(range(8)), list(range(8, 16))]
    assert plan.hosts[1].env["ASCEND_RT_VISIBLE_DEVICES"] == ",".join(map(str, range(16)))
    assert inventory_warnings(parse_inventory(edited())) == []


def test_validate_prints_a_warning_and_still_succeeds(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(edited(container__devices=16)))
    r = subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", "validate", str(inv)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    first, ok = r.stdout.splitlines()
    assert first.startswith(f"{inv}:") and ": container.devices: warning: containers see more NPUs" in first
    assert ": ok: 2 hosts" in ok
    r = subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", "plan", "--json", str(inv)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "warning: containers see more NPUs" in r.stderr and r.stdout.startswith("{")


def test_visible_devices_cannot_be_set_by_hand() -> None:
    assert messages(edited(job__env={"ASCEND_RT_VISIBLE_DEVICES": "0"})) == [
        "job.env.ASCEND_RT_VISIBLE_DEVICES: ASCEND_RT_VISIBLE_DEVICES is computed by q7x2-deploy for every host and cannot be set here"
    ]


def test_npu_ranges() -> None:
    assert npu_ranges([0, 1, 2, 3, 8, 10, 11]) == "0-3, 8, 10-11" and npu_ranges([]) == ""


def test_hccl_timeouts_left_at_risky_values_warn() -> None:
    def warned(data: dict) -> list[str]:
        return [f"{w.dotted}: {w.message.split(':')[0]}" for w in inventory_warnings(parse_inventory(data))]

    assert warned(edited()) == []  # the example raises HCCL_CONNECT_TIMEOUT to 1200
    assert warned(edited(job__env={})) == ["job.env: HCCL_CONNECT_TIMEOUT is HCCL's default 120 s with 2 hosts"]
    assert warned(edited(job__env={}, hosts=[BASE_HOST])) == []  # one host: nothing to wait for
    assert warned(edited(job__env={"HCCL_CONNECT_TIMEOUT": "1200", "HCCL_EXEC_TIMEOUT": "0"})) == [
        "job.env.HCCL_EXEC_TIMEOUT: HCCL_EXEC_TIMEOUT 0 never times out"]
    assert warned(edited(image__flavor="cpu", job__env={}, job__tools={"convert": "q7x2", "preprocess": "q7x2"})) == []
