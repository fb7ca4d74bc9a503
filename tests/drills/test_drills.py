"""Recovery drills: a real fault during training on a 3-host sandbox (2 ranks + 1 spare); each
run must finish every iteration with exit 0, resume from the last complete save, and train the
same losses after the resume as an uninterrupted run. In the order of the issue's priorities."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.drills.drill_support import (
    Ctx,
    Drills,
    assert_recovered,
    drill_sandbox,
    reference_losses,
    run_drill,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


@pytest.fixture(scope="module")
def drills(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    for d in drill_sandbox():
        d.reference = reference_losses(d, tmp_path_factory.mktemp("reference"))
        yield d


def _power_back(d: Drills, i: int) -> None:
    st = {h["name"]: h for h in d.cluster.status(d.cfg)["hosts"]}  # type: ignore[attr-defined]
    h = st[d.name(i)]
    if not h["running"]:
        d.cluster.start(d.cfg, d.name(i), log=lambda _m: None)  # type: ignore[attr-defined]
    if h["cut"]:
        d.cluster.heal(d.cfg, d.name(i), log=lambda _m: None)  # type: ignore[attr-defined]


def test_4_killed_container_restarts_on_the_same_hosts(drills: Drills, tmp_path: Path) -> None:
    run = run_drill(drills, tmp_path, "drill-kill", 6311, lambda c: c.container(1, 1).kill())
    ev = assert_recovered(run, drills.reference)
    assert ev["host"] == drills.name(1) and ev["action"] == "restart on the same hosts"
    assert ev["cause"] == "container exited with status 137"
    assert f"[{drills.name(1)} 1]" in run.text[run.text.index("starting the train phase again"):]
    print(f"\ndrill 4: {json.dumps(ev)}")


def test_1_power_loss_of_a_host_the_spare_takes_its_rank(drills: Drills, tmp_path: Path) -> None:
    stop = lambda c: drills.cluster.stop(drills.cfg, drills.name(1), log=lambda _m: None)  # type: ignore[attr-defined]  # noqa: E731
    try:
        run = run_drill(drills, tmp_path, "drill-lost", 6312, stop)
    finally:
        _power_back(drills, 1)
    ev = assert_recovered(run, drills.reference)
    assert ev["host"] == drills.name(1) and ev["cause"] == "lost (no SSH reply)"
    assert ev["action"] == f"spare {drills.name(2)} takes rank 1"
    line = (f"q7x2-deploy: recovery 1/3: {drills.name(1)} lost (no SSH reply); spare {drills.name(2)} takes "
            f"rank 1; resuming from iteration 20")
    assert line in run.text
    assert f"[{drills.name(2)} 1]" in run.text  # the spare trained as rank 1
    print(f"\ndrill 1: {json.dumps(ev)}")


def test_2_power_loss_of_the_master_the_spare_takes_rank_0(drills: Drills, tmp_path: Path) -> None:
    stop = lambda c: drills.cluster.stop(drills.cfg, drills.name(0), log=lambda _m: None)  # type: ignore[attr-defined]  # noqa: E731
    try:
        run = run_drill(drills, tmp_path, "drill-master", 6313, stop)
    finally:
        _power_back(drills, 0)
    ev = assert_recovered(run, drills.reference)
    assert ev["host"] == drills.name(0) and ev["action"] == f"spare {drills.name(2)} takes rank 0 and becomes the master"
    plan = json.loads((run.workdir / ".q7x2" / "runs" / "drill-master" / "plan.json").read_text())
    assert plan["master_addr"] == drills.address(2)  # MASTER_ADDR moved with rank 0
    assert {h["name"]: h["env"]["MASTER_ADDR"] for h in plan["hosts"]} == {
        drills.name(2): drills.address(2), drills.name(1): drills.address(2)}
    assert f"[{drills.name(2)} 0]" in run.text
    print(f"\ndrill 2: {json.dumps(ev)}")


def _freeze_rank_0(c: Ctx) -> None:
    """SIGSTOP every process of rank 0's container but its init, on its host: the engine's pids
    are the host's (each sandbox host has its own pid namespace, and no procps)."""
    from q7x2_deploy.executor.supervise import _PROC_SCRIPT

    listing = c.d.ssh(0, "sh", "-c", _PROC_SCRIPT, "sh", f"q7x2-{c.job}-pretrain-0")
    root, children = 0, {}
    for line in listing.splitlines():
        parts = line.split()
        if parts[:1] == ["@root"]:
            root = int(parts[1])
        elif len(parts) == 3 and parts[0].isdigit():
            children.setdefault(int(parts[2]), []).append(int(parts[0]))
    todo, pids = list(children.get(root, [])), []
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    assert root and pids, listing[-2000:]
    c.d.ssh(0, "kill", "-STOP", *map(str, pids))


def test_5_sigstop_is_a_hang_detected_after_hang_timeout(drills: Drills, tmp_path: Path) -> None:
    run = run_drill(drills, tmp_path, "drill-hang", 6315, _freeze_rank_0,
                    recovery={"hang_timeout_minutes": 0.75})
    ev = assert_recovered(run, drills.reference)
    assert ev["host"] == drills.name(0), ev  # the stopped host is named, not the one that waited
    assert ev["cause"].startswith("hung (no iteration line for") and "is stopped" in ev["cause"]
    assert ev["action"] == "restart on the same hosts"
    print(f"\ndrill 5: {json.dumps(ev)}")


def test_8_max_restarts_exhausted_is_a_clear_failure(drills: Drills, tmp_path: Path) -> None:
    def kill_twice(c: Ctx) -> None:
        c.container(1, 1).kill()
        at = c.wait_for("starting the train phase again", timeout=300)
        c.wait_for(r"\] +iteration +2[1-9]/", timeout=300, after=at)
        c.container(1, 1).kill()

    run = run_drill(drills, tmp_path, "drill-exhaust", 6318, kill_twice, recovery={"max_restarts": 1})
    assert run.rc != 0
    assert [e["gave_up"] for e in run.events] == [False, True], run.events
    last = run.events[-1]
    assert last["host"] == drills.name(1) and last["restart"] == 1 and last["max_restarts"] == 1
    assert "failed again after 1 restart(s) (max_restarts 1)" in last["action"]
    assert run.events[0]["resume_iteration"] == 20
    assert f"recovery stopped after 1 restart(s): {drills.name(1)} failed again" in run.text
    assert f"hosts involved: {drills.name(1)}" in run.text
    print(f"\ndrill 8: {json.dumps(run.events)}")


def test_3_cut_with_no_spare_waits_then_resumes_on_the_same_host(drills: Drills, tmp_path: Path) -> None:
    def cut_then_heal(c: Ctx) -> None:
        drills.cluster.cut(drills.cfg, drills.name(1), log=lambda _m: None)  # type: ignore[attr-defined]
        c.wait_for("waiting up to", timeout=300)
        time.sleep(5)
        drills.cluster.heal(drills.cfg, drills.name(1), log=lambda _m: None)  # type: ignore[attr-defined]

    try:
        run = run_drill(drills, tmp_path, "drill-cut", 6316, cut_then_heal, spares=0)
    finally:
        _power_back(drills, 1)
    ev = assert_recovered(run, drills.reference)
    assert ev["host"] == drills.name(1) and ev["cause"] == "lost (no SSH reply)"
    assert ev["action"].startswith(f"{drills.name(1)} came back after") and ev["action"].endswith("passed preflight")
    print(f"\ndrill 3: {json.dumps(ev)}")
