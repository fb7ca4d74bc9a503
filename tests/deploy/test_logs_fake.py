"""`logs -f` against the in-memory runtime: a stream that breaks mid-way is reconnected after the
back-off, the replayed lines are not shown twice, and a stop request ends a reconnect wait."""

from __future__ import annotations

import threading
import time
from io import StringIO
from pathlib import Path

import pytest

from deploy_fixtures import make_plan
from fake_runtime import FakeRuntime, FakeTransport, Script, World
from q7x2_deploy.executor import logs
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.runs.output import LogSink


@pytest.fixture(autouse=True)
def _runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("Q7X2_RUNS_DIR", str(tmp_path / "runs"))


def _started(tmp_path: Path, job: str, script: Script) -> tuple[Cluster, World]:
    plan = make_plan(job, {"a": {}}, {"a": [("pretrain", "train", "x")]}, tmp_path / "hosts")
    world = World({plan.hosts[0].steps[0].container_name: script})
    runtime = FakeRuntime(world, "a")
    runtime.start(plan.hosts[0].steps[0])
    cluster = Cluster(plan, {"a": FakeTransport(world, "a")},  # type: ignore[dict-item]
                      runtime_factory=lambda t: runtime)  # type: ignore[arg-type, return-value]
    return cluster, world


def _follow(cluster: Cluster, stop: threading.Event) -> tuple[StringIO, threading.Thread]:
    out = StringIO()
    sink = LogSink(cluster.plan.job_name, echo=True, stream=out, keep_files=False)
    th = threading.Thread(target=logs.follow_logs, args=(cluster, sink), kwargs={"stop": stop}, daemon=True)
    th.start()
    return out, th


def test_a_broken_stream_is_resumed_without_repeating_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "RECONNECT_DELAYS_S", (0.05, 0.1))
    cluster, world = _started(tmp_path, "t-cut", Script([f"line{i}" for i in range(1, 11)], pace=0.01))
    world.cut_stream_after["a"] = 4
    stop = threading.Event()
    out, th = _follow(cluster, stop)
    deadline = time.monotonic() + 10
    while "line10" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    th.join(5)
    text = out.getvalue().splitlines()
    assert [t for t in text if t.startswith("[a 0]")] == [f"[a 0] line{i}" for i in range(1, 11)]
    assert "q7x2-deploy: a: lost (connection dropped); reconnecting in 0.05s" in text
    assert not th.is_alive()


def test_a_stop_request_ends_a_reconnect_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "RECONNECT_DELAYS_S", (30,))
    cluster, world = _started(tmp_path, "t-stop", Script(["only"], pace=0.01, hangs=True))
    world.lost.add("a")  # every reconnect fails: the follower waits 30 s between tries
    stop = threading.Event()
    out, th = _follow(cluster, stop)
    deadline = time.monotonic() + 5
    while "reconnecting in 30s" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    stop.set()
    th.join(5)
    assert not th.is_alive() and time.monotonic() - started < 2
    assert "q7x2-deploy: a: lost (no reply); reconnecting in 30s" in out.getvalue()
