"""Recovery drills: a real fault during training on a 3-host sandbox (2 ranks + 1 spare); each
run must finish every iteration with exit 0, resume from the last complete save, and train the
same losses after the resume as an uninterrupted run. In the order of the issue's priorities."""

from __future__ import annotations

import json
import re
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
    """SIGSTOP every process of rank 0's container but its init, in one call to its host's engine
    (`kill -1` from an exec'd shell signals every process of the container's pid namespace but
    the caller and pid 1): the sample model trains an iteration in a fraction of a second, so a
    slower freeze lets it past the next save."""
    r = c.container(0, 0).exec_run(["sh", "-c", "kill -STOP -1"])
    assert r.exit_code == 0, r.output


def test_5_sigstop_is_a_hang_detected_after_hang_timeout(drills: Drills, tmp_path: Path) -> None:
    # 45 s: well over an iteration or a save of the sample model on a busy machine, and shorter
    # than the start-up of a restarted run there, which the hang clock does not count.
    # The freeze goes in right after the save of iteration 20, nine iterations before the next.
    run = run_drill(drills, tmp_path, "drill-hang", 6315, _freeze_rank_0, recovery={"hang_timeout_minutes": 0.75},
                    fault_after=21)
    # Rank 0 writes the saves, so the last one before the hang was reported is the last complete
    # one (20 unless the machine was slow enough for the run to reach 30 before the freeze).
    hung = run.text.index("failed in pretrain")
    last_save = max(int(m) for m in re.findall(r"saved checkpoint at iteration\s+(\d+)", run.text[:hung]))
    ev = assert_recovered(run, drills.reference, last_save=last_save)
    assert ev["host"] == drills.name(0), ev  # the stopped host is named, not the one that waited
    assert ev["cause"].startswith("hung (no iteration line for") and "is stopped" in ev["cause"]
    assert ev["action"] == "restart on the same hosts"
    # The hang_timeout, counted from the last iteration line (seen right before the SIGSTOP).
    assert ev["detected_at"] - run.fault_at >= 44, (ev, run.fault_at)
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


def test_7_sigkill_while_writing_a_checkpoint_resumes_from_the_one_before(drills: Drills, tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def kill_mid_save(c: Ctx) -> None:
        ckpt = drills.shared / "q7x2-drills" / c.job / "ckpt"
        partial = ckpt / ".iter_0000030.partial"
        writer = c.container(0, 0)  # shared storage: global rank 0 writes and moves the directory
        deadline = time.monotonic() + 120
        while not partial.exists():
            assert time.monotonic() < deadline, "the save of iteration 30 never started"
            time.sleep(0.002)
        writer.kill()  # SIGKILL, through the host's engine
        seen["listing"] = sorted(p.name for p in ckpt.iterdir())
        seen["tracker"] = (ckpt / "latest_checkpointed_iteration.txt").read_text().strip()

    run = run_drill(drills, tmp_path, "drill-midsave", 6317, kill_mid_save)
    assert seen["tracker"] == "20", seen  # the kill landed before iteration 30 was published
    ev = assert_recovered(run, drills.reference)
    assert ev["resume_iteration"] == 20 and ev["last_iteration"] >= 29
    assert "saved checkpoint at iteration       30" not in run.text[:run.fault_offset]
    print(f"\ndrill 7: {json.dumps(ev)} at kill: {seen}")


def test_6_npu_alarm_found_by_the_recheck_puts_the_spare_in(drills: Drills, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Run spec check only: the cpu image cannot train an ascend-flavor job, so the failure that
    an Alarm brings is given; the re-check is the real preflight of the ascend run spec over SSH,
    against the sandbox's npu-smi fault drill, and the decision and the new plan are the real ones."""
    import yaml

    from q7x2_deploy.executor.cluster import open_cluster
    from q7x2_deploy.transport.factory import ssh_factory
    from q7x2_deploy.runs.output import LogSink
    from q7x2_deploy.executor.recovery import Incident, Policy
    from q7x2_deploy.executor.recovery_cluster import ClusterOps
    from q7x2_deploy.executor.recovery_run import RecoveryLoop
    from q7x2_deploy.validation import load_inventory
    from q7x2_deploy.plan import build_plan
    from q7x2_deploy.sandbox.ascend import FAULTS_FILE
    from tests.drills.drill_support import ASCEND_DEVICES, _write_inventory

    monkeypatch.setenv("Q7X2_RUNS_DIR", str(tmp_path / "runs"))
    path = _write_inventory(drills, tmp_path / "inv.yaml", "drill-npu", 6319)
    data = yaml.safe_load(path.read_text())
    data["image"]["flavor"] = "ascend"
    data["container"]["devices"] = ASCEND_DEVICES
    data["job"]["parallelism"]["npus_per_node"] = ASCEND_DEVICES
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    inv = load_inventory(path)
    failed, spare = drills.name(1), drills.name(2)

    with open_cluster(build_plan(inv), ssh_factory()) as cl:
        ops = ClusterOps(cl, ssh_factory(), LogSink("drill-npu", echo=False, keep_files=False))
        switched: list[list[str]] = []

        class AlarmThenFinish:
            runs = [Incident(failed, 1, "exit", "container exited with status 1", time.time(), exit_code=1), None]

            def train(self, inv, on_training):  # type: ignore[no-untyped-def]
                return self.runs.pop(0)

            check, sleep, now = ops.check, ops.sleep, ops.now

            def switch(self, old, new):  # type: ignore[no-untyped-def]
                switched.append([h.name for h in new.hosts])

        said: list[str] = []
        events: list = []
        cl.transport(failed).write_file(FAULTS_FILE, b"health 0 Alarm\n")
        try:
            final = RecoveryLoop(AlarmThenFinish(), Policy.of(inv), said.append, events.append).run(inv)  # type: ignore[arg-type]
        finally:
            cl.transport(failed).check(["rm", "-f", FAULTS_FILE])
            ops.close()
    (ev,) = events
    assert ev.cause.startswith("container exited with status 1; re-check: npu: ") and "Alarm" in ev.cause, ev.cause
    assert ev.action == f"spare {spare} takes rank 1" and switched == [[drills.name(0), spare]]
    new = build_plan(final)
    taker = next(h for h in new.hosts if h.name == spare)
    assert taker.node_rank == 1 and "/dev/davinci0" in taker.docker_run and new.flavor == "ascend"
    print(f"\ndrill 6: {ev.to_json()}")
