"""A plan written as JSON reads back as the same plan, and `up --plan` refuses one it cannot trust."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from q7x2_deploy.cli import main
from q7x2_deploy.inventory import Inventory
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import Plan, build_plan
from q7x2_deploy.sandbox.config import SandboxConfig
from q7x2_deploy.sandbox.inventory_file import build as sandbox_inventory
from q7x2_deploy.validation import validate_data
from q7x2_runtime.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventory.example.yaml"


def _sandbox_like(count: int, **job: object) -> Inventory:
    data = sandbox_inventory(SandboxConfig(), count)
    data["job"]["model"] = {"preset": "qwen2.5-7b"}  # the sample's config.json exists only after `sandbox up`
    data["job"].update(job)
    inv, violations = validate_data(data)
    assert inv is not None and not violations, violations
    return inv


def _plans() -> list[tuple[str, Plan]]:
    example = build_plan(load_inventory(EXAMPLE))
    shared = build_plan(_sandbox_like(2))
    pernode = build_plan(_sandbox_like(3, storage="per-node"))
    no_nic = copy.deepcopy(sandbox_inventory(SandboxConfig(), 2))
    no_nic["job"]["model"] = {"preset": "qwen2.5-7b"}
    for h in no_nic["hosts"]:
        del h["nic"]
    inv, violations = validate_data(no_nic)
    assert inv is not None and not violations
    detected = build_plan(inv)
    assert all(h.detect_nic for h in detected.hosts)
    pinned = detected.with_nics({h.name: "eth0" for h in detected.hosts})  # as `up` keeps it in plan.json
    return [("example", example), ("sandbox shared", shared), ("sandbox per-node", pernode),
            ("sandbox, NIC to detect", detected), ("sandbox, NIC detected", pinned)]


@pytest.mark.parametrize("name,plan", _plans(), ids=lambda x: x if isinstance(x, str) else "")
def test_plan_json_round_trip(name: str, plan: Plan) -> None:
    text = plan.to_json()
    again = Plan.from_json(text)
    assert again == plan, name
    assert again.to_json() == text


def _refusal(text: str) -> str:
    with pytest.raises(UserError) as e:
        Plan.from_json(text, "p.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("p.json: "), msg
    return msg


def test_a_plan_of_another_format_version_or_not_a_plan_is_refused() -> None:
    doc = build_plan(load_inventory(EXAMPLE)).to_dict()
    assert "plan format version 2" in _refusal(json.dumps({**doc, "version": 2}))
    assert "no `version`" in _refusal(json.dumps({k: v for k, v in doc.items() if k != "version"}))
    assert "not JSON" in _refusal("{")


def _edited(change) -> str:  # type: ignore[no-untyped-def]
    doc = json.loads(build_plan(load_inventory(EXAMPLE)).to_json())
    change(doc)
    return json.dumps(doc)


def test_a_plan_that_does_not_validate_is_refused_with_one_line() -> None:
    msg = _refusal(_edited(lambda d: d["hosts"][0].update(node_rank="0")))
    assert "hosts.0.node_rank" in msg
    assert "hosts.1.surprise" in _refusal(_edited(lambda d: d["hosts"][1].update(surprise=1)))
    msg = _refusal(_edited(lambda d: d["hosts"][1]["steps"][0]["docker_run"].insert(3, "--privileged")))
    assert "hosts[1].steps[0].docker_run does not follow" in msg
    msg = _refusal(_edited(lambda d: d["hosts"][1].update(devices=["/dev/davinci9"])))
    assert "hosts[1].docker_run does not follow" in msg
    assert "2 masters" in _refusal(_edited(lambda d: d["hosts"][1].update(is_master=True)))
    assert "job_spec.job.training" in _refusal(_edited(lambda d: d["job_spec"]["job"]["training"].update(lr="x")))


def test_up_with_plan_refuses_with_one_line_before_touching_any_host(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    plan = build_plan(load_inventory(EXAMPLE))
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**plan.to_dict(), "version": 0}))
    assert main(["up", "--plan", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "plan format version 0" in err and "Traceback" not in err

    other = json.loads(plan.to_json())
    other["hosts"][0]["env"]["HCCL_CONNECT_TIMEOUT"] = "60"
    other["hosts"][0]["docker_run"] = [a.replace("HCCL_CONNECT_TIMEOUT=1200", "HCCL_CONNECT_TIMEOUT=60")
                                       for a in other["hosts"][0]["docker_run"]]
    for s in other["hosts"][0]["steps"]:
        s["docker_run"] = [a.replace("HCCL_CONNECT_TIMEOUT=1200", "HCCL_CONNECT_TIMEOUT=60") for a in s["docker_run"]]
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(other))
    Plan.from_json(stale.read_text())  # a valid plan, only not this inventory's any more
    assert main(["up", str(EXAMPLE), "--plan", str(stale)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not the plan" in err and "hosts[0].env.HCCL_CONNECT_TIMEOUT" in err
