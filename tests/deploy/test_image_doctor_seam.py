"""`check --deep` runs doctor through the container-runtime seam: one throwaway container per
host that has the image, with the host's env and read-only mounts; each host's verdict comes
from its own output."""

from __future__ import annotations

import json
from pathlib import Path

from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.image_doctor import DOCTOR_COMMAND, check_image_versions
from q7x2_deploy.executor.preflight import Check, HostReport
from q7x2_deploy.plan import build_plan
from q7x2_deploy.validation import load_inventory
from tests.deploy.fake_runtime import FakeRuntime, FakeTransport, World

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory.example.yaml"


def _report(ok: bool, torch: str) -> str:
    verdict = "ok" if ok else "mismatch"
    return json.dumps({"flavor": "ascend", "ok": ok,
                       "findings": [{"name": "torch", "want": "2.1.0", "have": torch, "verdict": verdict}]})


def test_each_host_with_the_image_gets_its_own_doctor_verdict() -> None:
    plan = build_plan(load_inventory(EXAMPLE))
    a, b = (h.name for h in plan.hosts)
    world = World({})
    world.one_off = {a: (0, "pulling nothing\n" + _report(True, "2.1.0")), b: (1, _report(False, "2.4.0"))}
    runtimes = {h.name: FakeRuntime(world, h.name) for h in plan.hosts}
    transports = {h.name: FakeTransport(world, h.name) for h in plan.hosts}
    cluster = Cluster(plan, transports, runtime_factory=lambda t: runtimes[t.host])  # type: ignore[arg-type, attr-defined, return-value]
    reports = [HostReport(h.name, h.node_rank, [Check("image", "ok", "sha256:abc")]) for h in plan.hosts]
    check_image_versions(cluster, reports)

    verdicts = {r.host: r.get("doctor") for r in reports}
    assert verdicts[a] is not None and verdicts[a].level == "ok", verdicts
    assert verdicts[b] is not None and verdicts[b].level == "fail" and "2.4.0" in verdicts[b].detail, verdicts
    calls = {c[0]: c for c in world.one_off_calls}
    assert set(calls) == {a, b}
    host_a = plan.hosts[0]
    _, image, command, env, mounts = calls[a]
    assert image == plan.image_ref and command == DOCTOR_COMMAND and env == host_a.env
    assert mounts and all(m.endswith(":ro") for m in mounts)
    assert mounts == [m.option() for m in host_a.mounts if m.read_only and m.target != "/etc/q7x2"]


def test_a_host_without_the_image_is_skipped_and_runs_nothing() -> None:
    plan = build_plan(load_inventory(EXAMPLE))
    world = World({})
    runtimes = {h.name: FakeRuntime(world, h.name) for h in plan.hosts}
    cluster = Cluster(plan, {h.name: FakeTransport(world, h.name) for h in plan.hosts},  # type: ignore[misc]
                      runtime_factory=lambda t: runtimes[t.host])  # type: ignore[arg-type, attr-defined, return-value]
    reports = [HostReport(h.name, h.node_rank) for h in plan.hosts]
    check_image_versions(cluster, reports)
    assert all(r.get("doctor") is not None and r.get("doctor").level == "skip" for r in reports)  # type: ignore[union-attr]
    assert world.one_off_calls == []
