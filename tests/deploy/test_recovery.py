"""Recovery decisions against a fake at the cluster boundary: classification, replace or wait,
max_restarts, the master moving with rank 0, and the event records. Milliseconds, no host."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from q7x2_deploy.executor.recovery import HostCheck, Incident, Policy, RecoveryEvent, describe_cause, replace_host
from q7x2_deploy.executor.recovery_run import RecoveryLoop, RecoveryStopped
from q7x2_deploy.backends.docker_cli import stopped_descendants
from q7x2_deploy.executor.supervise import JobFailed, OnTraining
from q7x2_deploy.inventory import Inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.validation import validate_data

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())


def inventory(spares: int = 1, **recovery: float) -> Inventory:
    data = copy.deepcopy(BASE)
    data["hosts"] = [{"name": "a", "address": "192.0.2.1"}, {"name": "b", "address": "192.0.2.2"}]
    data["spares"] = [{"name": f"s{i}", "address": f"192.0.2.{10 + i}"} for i in range(spares)]
    data["master"].pop("host", None)  # rank 0 is the master
    data["job"]["recovery"] = {"max_restarts": 3, **recovery}
    inv, violations = validate_data(data)
    assert violations == [] and inv is not None, violations
    return inv


def incident(host: str, rank: int, kind: str = "exit", at: float = 100.0, **kw: object) -> Incident:
    return Incident(host, rank, kind, kw.pop("detail", "container exited with status 137"), at,  # type: ignore[arg-type]
                    healthy_until=at - 2.0, last_iteration=kw.pop("last", 25),
                    exit_code=kw.pop("code", 137 if kind == "exit" else None), message="fail-fast message")


@dataclass
class FakeCluster:
    """Scripted runs and host health; records what recovery asked for."""

    runs: list[Incident | None]  # each train() returns the next; None = finished
    health: dict[str, list[HostCheck]] = field(default_factory=dict)  # per host, one per check()
    resume_at: int = 20
    clock: float = 0.0
    trained_on: list[list[tuple[int, str]]] = field(default_factory=list)  # (rank, host) per run
    switches: list[tuple[list[str], list[str]]] = field(default_factory=list)

    def train(self, inv: Inventory, on_training: OnTraining) -> Incident | None:
        self.trained_on.append([(h.node_rank, h.name) for h in build_plan(inv).hosts])
        if len(self.trained_on) > 1:  # a restarted run says where it resumed, then trains
            on_training(self.resume_at, self.resume_at + 1, self.clock + 130.0)
        return self.runs.pop(0)

    def check(self, inv: Inventory, host: str) -> HostCheck:
        queue = self.health.get(host)
        return queue.pop(0) if queue and len(queue) > 1 else (queue[0] if queue else HostCheck(host, "ok"))

    def switch(self, old: Inventory, new: Inventory) -> None:
        self.switches.append(([h.name for h in old.hosts], [h.name for h in new.hosts]))

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    def now(self) -> float:
        return self.clock


def run(fake: FakeCluster, inv: Inventory) -> tuple[Inventory | None, list[str], list[RecoveryEvent], Exception | None]:
    said: list[str] = []
    events: list[RecoveryEvent] = []
    loop = RecoveryLoop(fake, Policy.of(inv), said.append, events.append, wall=lambda: fake.clock + 112.0)
    try:
        return loop.run(inv), said, events, None
    except (RecoveryStopped, JobFailed) as e:
        return None, said, events, e


def test_a_killed_container_restarts_on_the_same_hosts() -> None:
    fake = FakeCluster([incident("b", 1), None])
    final, said, events, err = run(fake, inventory())
    assert err is None and final is not None
    assert fake.trained_on == [[(0, "a"), (1, "b")]] * 2
    assert [h.name for h in final.spares] == ["s0"]  # the spare was not needed
    (ev,) = events
    assert ev.line() == ("q7x2-deploy: recovery 1/3: b container exited with status 137; "
                         "restart on the same hosts; resuming from iteration 20")
    rec = json.loads(ev.to_json())
    assert rec["resume_iteration"] == 20 and rec["iterations_lost"] == 5 and rec["last_iteration"] == 25
    assert rec["seconds_to_detect"] == 2.0 and rec["seconds_until_training"] == 30.0
    assert rec["seconds_until_restart"] == 12.0
    assert rec["seconds_waiting_for_host"] is None  # nothing was waited for
    assert rec["time"].startswith("1970-01-01T00:01:40")


def test_a_lost_host_is_replaced_by_the_spare_with_its_rank() -> None:
    fake = FakeCluster([incident("b", 1, "lost", detail="host stopped answering"), None],
                       health={"b": [HostCheck("b", "unreachable", "ssh: timed out")]})
    final, said, events, err = run(fake, inventory())
    assert err is None and final is not None
    assert fake.trained_on[1] == [(0, "a"), (1, "s0")]
    assert final.spares == [] and fake.switches == [(["a", "b"], ["a", "s0"])]
    assert events[0].line() == ("q7x2-deploy: recovery 1/3: b lost (no SSH reply); spare s0 takes rank 1; "
                                "resuming from iteration 20")
    assert events[0].hosts == ["b", "s0"]


def test_the_master_moves_with_rank_0() -> None:
    inv = inventory()
    before = build_plan(inv)
    fake = FakeCluster([incident("a", 0, "lost"), None], health={"a": [HostCheck("a", "unreachable")]})
    final, _, events, err = run(fake, inv)
    assert err is None and final is not None
    after = build_plan(final)
    assert before.master_addr == "192.0.2.1" and after.master_addr == "192.0.2.10"
    assert [(h.name, h.node_rank, h.env["MASTER_ADDR"]) for h in after.hosts] == [
        ("s0", 0, "192.0.2.10"), ("b", 1, "192.0.2.10")]
    assert after.job_spec.cluster.master_addr == "192.0.2.10"
    assert "spare s0 takes rank 0 and becomes the master" in events[0].action


def test_a_named_master_is_renamed_to_the_spare() -> None:
    inv = inventory().model_copy(update={"master": inventory().master.model_copy(update={"host": "b"})})
    new = replace_host(inv, "b", "s0")
    assert new.master.host == "s0" and build_plan(new).master_addr == "192.0.2.10"
    assert build_plan(replace_host(inv, "a", "s0")).master_addr == "192.0.2.2"  # b stays master


def test_an_unhealthy_npu_found_by_the_recheck_replaces_the_host() -> None:
    fake = FakeCluster([incident("b", 1, code=1), None],
                       health={"b": [HostCheck("b", "unhealthy", "npu: NPU 0 health Alarm")]})
    final, _, events, err = run(fake, inventory())
    assert err is None and final is not None and [h.name for h in final.hosts] == ["a", "s0"]
    assert events[0].cause == "container exited with status 1; re-check: npu: NPU 0 health Alarm"


def test_an_unusable_spare_is_skipped_for_the_next() -> None:
    fake = FakeCluster([incident("b", 1, "lost"), None],
                       health={"b": [HostCheck("b", "unreachable")], "s0": [HostCheck("s0", "unreachable")]})
    final, said, _, err = run(fake, inventory(spares=2))
    assert err is None and final is not None
    assert [h.name for h in final.hosts] == ["a", "s1"] and [s.name for s in final.spares] == ["s0"]
    assert any("spare s0 is not usable" in s for s in said)


def test_no_spare_waits_for_the_host_to_come_back() -> None:
    down = HostCheck("b", "unreachable")
    fake = FakeCluster([incident("b", 1, "lost"), None], health={"b": [down, down, down, HostCheck("b", "ok")]})
    final, said, events, err = run(fake, inventory(spares=0, host_wait_minutes=1))
    assert err is None and final is not None and [h.name for h in final.hosts] == ["a", "b"]
    assert any("waiting up to 1 min" in s for s in said)
    assert events[0].action == "b came back after 15s and passed preflight"
    assert events[0].seconds_waiting_for_host == 15.0  # the outage, told apart from the restart's own time


def test_no_spare_and_the_host_never_returns_gives_up_naming_it() -> None:
    fake = FakeCluster([incident("b", 1, "lost"), None], health={"b": [HostCheck("b", "unreachable")]})
    _, said, events, err = run(fake, inventory(spares=0, host_wait_minutes=0.5))
    assert isinstance(err, RecoveryStopped)
    assert "b did not pass preflight within 0.5 min" in str(err) and "hosts involved: b" in str(err)
    assert fake.clock >= 30 and events[-1].gave_up and len(fake.trained_on) == 1


def test_no_spare_and_no_wait_gives_up_at_once() -> None:
    fake = FakeCluster([incident("b", 1, "lost"), None], health={"b": [HostCheck("b", "unreachable")]})
    _, _, events, err = run(fake, inventory(spares=0, host_wait_minutes=0))
    assert isinstance(err, RecoveryStopped) and "host_wait_minutes is 0" in str(err)
    assert fake.clock == 0


def test_max_restarts_exhausted_stops_with_every_event_recorded() -> None:
    fake = FakeCluster([incident("b", 1, at=100.0 * i) for i in range(1, 5)] + [None])
    _, said, events, err = run(fake, inventory())
    assert isinstance(err, RecoveryStopped)
    assert "b failed again after 3 restart(s) (max_restarts 3)" in str(err)
    assert [e.restart for e in events] == [1, 2, 3, 3] and [e.gave_up for e in events] == [False] * 3 + [True]
    assert len(fake.trained_on) == 4
    assert events[-1].line().startswith("q7x2-deploy: recovery 3/3: b container exited with status 137; giving up")


def test_max_restarts_0_is_fail_fast_with_its_message() -> None:
    fake = FakeCluster([incident("b", 1), None])
    _, said, events, err = run(fake, inventory(max_restarts=0))
    assert isinstance(err, JobFailed) and str(err) == "fail-fast message" and events == [] and said == []


def test_a_restart_that_fails_before_training_still_records_its_event() -> None:
    fake = FakeCluster([incident("b", 1), incident("b", 1), None])
    fake.resume_at = 20

    class NoTraining(FakeCluster):
        def train(self, inv: Inventory, on_training: OnTraining) -> Incident | None:
            self.trained_on.append([])
            return self.runs.pop(0)

    nt = NoTraining(fake.runs)
    _, _, events, err = run(nt, inventory())
    assert err is None
    assert [e.restart for e in events] == [1, 2] and events[0].resume_iteration is None


def test_hang_cause_reads_as_a_hang() -> None:
    inc = incident("a", 0, "hang", detail="no iteration line for 30m00s while every host answers")
    assert describe_cause(inc, HostCheck("a", "ok")) == "hung (no iteration line for 30m00s while every host answers)"


def test_a_stopped_process_is_found_among_the_containers_descendants() -> None:
    listing = "@root 100\n100 S 1\n101 S 100\n102 T 101\n103 T 7\n104 R 101\n"
    assert stopped_descendants(listing) == [102]  # 103 is stopped too, but not the container's
    assert stopped_descendants("100 T 1\n") == []  # no root: the container is gone


def test_recovery_settings_never_reach_the_job_file() -> None:
    plan = build_plan(inventory(hang_timeout_minutes=5))
    assert "recovery" not in json.loads(plan.job_spec.to_json())["job"]


def messages(data: dict) -> list[str]:
    _, violations = validate_data(data)
    return [f"{v.dotted}: {v.message}" for v in violations]


def test_spares_and_recovery_are_validated() -> None:
    data = copy.deepcopy(BASE)
    data["spares"] = [{"name": data["hosts"][0]["name"], "address": "192.0.2.99", "node_rank": 1},
                      {"name": "spare-b", "address": data["hosts"][1]["address"]}]
    assert messages(data) == [
        f"spares[0].name: {data['hosts'][0]['name']!r} is also used by hosts[0]; each spare needs its own name",
        "spares[0].node_rank: a spare has no rank: it takes the rank of the host it replaces",
        f"spares[1].address: {data['hosts'][1]['address']!r} is also used by hosts[1]; each spare needs its own address",
    ]
    data = copy.deepcopy(BASE)
    data["job"]["recovery"] = {"max_restarts": -1, "hang_timeout_minutes": 0, "host_wait": 3}
    assert messages(data) == [
        "job.recovery.max_restarts: Input should be greater than or equal to 0 (got -1)",
        "job.recovery.hang_timeout_minutes: Input should be greater than 0 (got 0)",
        "job.recovery.host_wait: unknown key (check its spelling; see inventory.example.yaml)",
    ]


def test_the_supervisor_reads_where_a_run_resumed_and_when_it_trains() -> None:
    from types import SimpleNamespace

    from deploy_fixtures import megatron_line

    from q7x2_deploy.runs.output import LogSink
    from q7x2_deploy.executor.supervise import Supervisor

    seen: list[tuple[int | None, int]] = []
    sup = Supervisor(SimpleNamespace(hosts=[]), LogSink("j", echo=False, keep_files=False),  # type: ignore[arg-type]
                     on_training=lambda resume, first, at: seen.append((resume, first)))
    host = SimpleNamespace(name="b", node_rank=1)
    for line in ["q7x2-runtime pretrain: node 1: start point: resume from /c at iteration 20 (optimizer and RNG state as saved)",
                 "  successfully loaded checkpoint from /c [ t 0, p 0 ] at iteration 20 (optimizer and RNG state)",
                 megatron_line(21, 40, 3.5), megatron_line(22, 40, 3.4)]:
        sup._progress(host, line)  # type: ignore[arg-type]
    assert seen == [(20, 21)] and sup.last_iteration == 22 and "b" in sup.last_line
    fresh = Supervisor(SimpleNamespace(hosts=[]), LogSink("j", echo=False, keep_files=False))  # type: ignore[arg-type]
    fresh._progress(host, "q7x2-runtime pretrain: node 0: start point: first start from the converted weights /m")  # type: ignore[arg-type]
    assert fresh.resume_iteration == 0


def test_the_detached_supervisor_is_shown_by_status_and_stopped_by_down(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    import time

    from q7x2_deploy.executor.recovery_supervisor import start_supervisor, stop_supervisor, supervisor_info
    from q7x2_deploy.runs.rundir import SUPERVISOR_FILE, append_event, run_dir
    from q7x2_deploy.executor.status import describe_recovery, recovery_summary

    monkeypatch.setenv("Q7X2_RUNS_DIR", str(tmp_path))
    assert supervisor_info("j") is None and stop_supervisor("j") is None
    # A stand-in with the supervisor's command line, so that pid checks see one of ours.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "q7x2_deploy", "up"])
    try:
        while b"q7x2_deploy" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
            time.sleep(0.01)  # until the child has exec'd
        (run_dir("j") / SUPERVISOR_FILE).write_text(json.dumps({"pid": proc.pid, "log": "x.out"}))
        assert start_supervisor("j", "inv.yaml", [])["pid"] == proc.pid  # one is running: no second
        append_event("j", RecoveryEvent(1, 3, "b", 1, "lost (no SSH reply)", "spare s0 takes rank 1", 100.0,
                                        resume_iteration=20).to_json())
        lines = describe_recovery(recovery_summary("j"))
        assert lines[0] == f"supervisor: running (pid {proc.pid}), output in x.out"
        assert lines[1] == ("recovery: 1 restart(s); last: 1970-01-01T00:01:40.000+00:00 b lost (no SSH reply); "
                            "spare s0 takes rank 1; resumed from iteration 20")
        assert stop_supervisor("j") == proc.pid and proc.wait(timeout=30) == -15
        assert supervisor_info("j") is None
    finally:
        proc.kill()


def test_a_rebuilt_plan_keeps_the_interfaces_up_detected() -> None:
    from q7x2_deploy.executor.cluster import Cluster
    from q7x2_deploy.runs.output import LogSink
    from q7x2_deploy.executor.recovery_cluster import ClusterOps

    inv = inventory()
    first = build_plan(inv).with_nics({"a": "eth7", "b": "eth8"})
    ops = ClusterOps(Cluster(first, {}), lambda h: None, LogSink("t-nics", echo=False, keep_files=False))  # type: ignore[arg-type, return-value]
    ops.nics["s0"] = "eth9"  # what a re-check of the spare found
    again = ops.plan(replace_host(inv, "b", "s0"))
    env = {h.name: (h.env.get("GLOO_SOCKET_IFNAME"), h.env.get("HCCL_SOCKET_IFNAME")) for h in again.hosts}
    assert env == {"a": ("eth7", "eth7"), "s0": ("eth9", "eth9")}
    assert all("GLOO_SOCKET_IFNAME=" + env[h.name][0] in h.steps[-1].docker_run for h in again.hosts)  # type: ignore[operator]


def test_status_and_logs_follow_the_job_onto_the_spare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from q7x2_deploy.runs.rundir import run_dir
    from q7x2_deploy.commands.session import running_plan

    monkeypatch.setenv("Q7X2_RUNS_DIR", str(tmp_path))
    inv = inventory()
    plan = build_plan(inv)
    assert running_plan(plan, {"s0"}) is plan  # no run yet
    swapped = build_plan(replace_host(inv, "b", "s0"))
    (run_dir(plan.job_name) / "plan.json").write_text(swapped.to_json())
    shown = running_plan(plan, {"s0"})
    assert [(h.name, h.node_rank) for h in shown.hosts] == [("a", 0), ("s0", 1)]
    assert running_plan(plan, set()) is plan  # s0 is no longer in the inventory: not this job's run
    (run_dir(plan.job_name) / "plan.json").write_text("{not json")
    assert running_plan(plan, {"s0"}) is plan
