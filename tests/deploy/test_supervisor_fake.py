"""The supervisor against an in-memory runtime (tests/deploy/fake_runtime.py): phases are
barriers, the first failure stops every host and names the failed one, a host that stops
answering is lost, a hang is told from slow progress and the stopped host named. Milliseconds;
the same behaviour against real containers is in test_executor_local.py and tests/e2e."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy_fixtures import make_plan
from fake_runtime import FakeRuntime, FakeTransport, Script, World
from q7x2_deploy.executor import supervise
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.executor.supervise import JobFailed, Supervisor
from q7x2_deploy.plan import Plan

ITER = "iteration {n}/  100 | consumed samples: {n} | elapsed time per iteration (ms): 10.0 | lm loss: 6.9E+00 |"


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("Q7X2_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(supervise, "HEARTBEAT_INTERVAL_S", 0.01)
    monkeypatch.setattr(supervise, "HEARTBEAT_TIMEOUT_S", 0.01)


def _plan(tmp_path: Path, job: str) -> Plan:
    steps = [("convert", "prepare", "x"), ("pretrain", "train", "x")]
    return make_plan(job, {"a": {}, "b": {}}, {"a": steps, "b": steps[1:]}, tmp_path / "hosts")


def _supervisor(plan: Plan, world: World, **kw: object) -> tuple[Supervisor, LogSink]:
    runtimes = {h.name: FakeRuntime(world, h.name) for h in plan.hosts}
    transports = {h.name: FakeTransport(world, h.name) for h in plan.hosts}
    cluster = Cluster(plan, transports, runtime_factory=lambda t: runtimes[t.host])  # type: ignore[arg-type, attr-defined, return-value]
    sink = LogSink(plan.job_name, echo=False)
    return Supervisor(cluster, sink, **kw), sink  # type: ignore[arg-type]


def test_a_phase_is_a_barrier_and_the_lines_reach_the_merged_output(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "t-barrier")
    world = World({"q7x2-t-barrier-convert-0": Script(["converting"], pace=0.05),
                   "q7x2-t-barrier-pretrain-0": Script([ITER.format(n=1)]),
                   "q7x2-t-barrier-pretrain-1": Script([ITER.format(n=1)])})
    sup, sink = _supervisor(plan, world)
    sup.run_phase("prepare", {})
    sup.run_phase("train", {})
    order = [e for e in world.events if e[0] in ("start", "end")]
    assert order.index(("end", "q7x2-t-barrier-convert-0")) < order.index(("start", "q7x2-t-barrier-pretrain-1"))
    assert sink.tail("a") == ["converting", ITER.format(n=1)] and sink.tail("b") == [ITER.format(n=1)]
    assert sup.last_iteration == 1 and sup.failure is None


def test_the_first_failure_stops_every_host_and_names_the_failed_one(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "t-failfast")
    world = World({"q7x2-t-failfast-pretrain-0": Script([ITER.format(n=1)], hangs=True),
                   "q7x2-t-failfast-pretrain-1": Script(["Traceback (most recent call last):", "RuntimeError: boom"],
                                                        exit_code=1)})
    sup, sink = _supervisor(plan, world)
    with pytest.raises(JobFailed, match=r"^b \(rank 1\) failed in pretrain: container q7x2-t-failfast-pretrain-1 "
                                        r"exited with status 1$"):
        sup.run_phase("train", {})
    assert ("stop", "q7x2-t-failfast-pretrain-0") in world.events  # the healthy host was stopped
    assert sup.failure is not None and (sup.failure.kind, sup.failure.exit_code) == ("exit", 1)


@pytest.mark.parametrize("when", ["before its container starts", "while it trains"])
def test_a_host_that_stops_answering_is_lost(tmp_path: Path, when: str) -> None:
    import threading

    plan = _plan(tmp_path, "t-lost")
    world = World({"q7x2-t-lost-pretrain-0": Script([ITER.format(n=1)], hangs=True),
                   "q7x2-t-lost-pretrain-1": Script([ITER.format(n=1)], hangs=True)})
    sup, _ = _supervisor(plan, world)
    if when == "before its container starts":
        world.lost.add("b")
    else:
        threading.Timer(0.2, world.lost.add, args=("b",)).start()
    with pytest.raises(JobFailed, match=r"^b \(rank 1\) failed in pretrain: host stopped answering"):
        sup.run_phase("train", {})
    assert sup.failure is not None and sup.failure.lost and sup.failure.kind == "lost"
    assert ("stop", "q7x2-t-lost-pretrain-0") in world.events  # the survivor was stopped; b not asked


def test_a_hang_names_the_host_with_a_stopped_process(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "t-hang")
    world = World({"q7x2-t-hang-pretrain-0": Script([ITER.format(n=1)], hangs=True),
                   "q7x2-t-hang-pretrain-1": Script([ITER.format(n=1)], hangs=True, stopped_pids=[4242])})
    sup, _ = _supervisor(plan, world, hang_timeout_s=0.3)
    with pytest.raises(JobFailed, match=r"^b \(rank 1\) failed in pretrain: no iteration line for .* while every "
                                        r"host answers; a process of b's container is stopped \(pid 4242\)$"):
        sup.run_phase("train", {})
    assert sup.failure is not None and sup.failure.kind == "hang"


def test_slow_progress_is_not_a_hang(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "t-slow")
    lines = [ITER.format(n=n) for n in range(1, 9)]
    world = World({"q7x2-t-slow-pretrain-0": Script(lines, pace=0.1), "q7x2-t-slow-pretrain-1": Script(lines, pace=0.1)})
    sup, _ = _supervisor(plan, world, hang_timeout_s=0.5)  # each line comes well within it; the run takes longer
    sup.run_phase("train", {})
    assert sup.failure is None and sup.last_iteration == 8


def test_a_start_up_slower_than_hang_timeout_is_not_a_hang(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "t-startup")
    lines = ["loading checkpoint"] * 5 + [ITER.format(n=1), ITER.format(n=2)]
    world = World({"q7x2-t-startup-pretrain-0": Script(lines, pace=0.4),
                   "q7x2-t-startup-pretrain-1": Script(lines, pace=0.4)})
    # The first iteration line comes 2.4 s after the start, over twice hang_timeout; the next
    # one 0.4 s after it, well within (a busy machine delays both alike).
    sup, _ = _supervisor(plan, world, hang_timeout_s=1.0, startup_wait_s=60.0)
    sup.run_phase("train", {})
    assert sup.failure is None and sup.last_iteration == 2


def test_the_start_up_has_its_own_bound_before_it_is_a_hang(tmp_path: Path) -> None:
    import time

    plan = _plan(tmp_path, "t-stuckstart")
    world = World({"q7x2-t-stuckstart-pretrain-0": Script(["loading checkpoint"], hangs=True, stopped_pids=[7]),
                   "q7x2-t-stuckstart-pretrain-1": Script(["loading checkpoint"], hangs=True)})
    sup, _ = _supervisor(plan, world, hang_timeout_s=0.2, startup_wait_s=0.6)
    started = time.monotonic()
    with pytest.raises(JobFailed, match=r"^a \(rank 0\) failed in pretrain: no iteration line \d+s after the train "
                                        r"phase started while every host answers; a process of a's container is "
                                        r"stopped \(pid 7\)$"):
        sup.run_phase("train", {})
    assert time.monotonic() - started >= 0.8  # startup_wait_s + hang_timeout_s, not hang_timeout_s alone
    assert sup.failure is not None and sup.failure.kind == "hang"


def test_the_start_up_bound_is_the_runtimes_connect_timeout(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "t-bound")
    sup, _ = _supervisor(plan, World({}), hang_timeout_s=60.0)
    assert sup.startup_wait_s == plan.job_spec.cluster.connect_timeout_s == 300


def test_an_earlier_attempts_finished_step_is_skipped(tmp_path: Path) -> None:
    from q7x2_deploy.backends.container_runtime import ContainerState

    plan = _plan(tmp_path, "t-skip")
    world = World({})
    sup, sink = _supervisor(plan, world)
    done = ContainerState("q7x2-t-skip-convert-0", "id", "exited", 0, plan.hosts[0].steps[0].labels, "sha256:x", "", "")
    sup.run_phase("prepare", {"a": {done.name: done}})
    assert ("start", "q7x2-t-skip-convert-0") not in world.events
