"""The executor against a real sshd and the real Docker engine: up, fail-fast, attach, lock,
logs, status, down, check and SSH image delivery. Both "hosts" are this machine; their
containers differ by name and label, as they would on two hosts."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from deploy_fixtures import TEST_IMAGE, ensure_test_image, make_plan, megatron_line
from deploy_sshd import LocalSSHD, start_sshd

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster, open_cluster
from q7x2_deploy.transport.factory import ssh_factory
from q7x2_deploy.executor.lock import JobLock
from q7x2_deploy.executor.logs import follow_logs, show_logs
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.executor.preflight import failure_message, preflight
from q7x2_deploy.runs.rundir import run_dir
from q7x2_deploy.executor.status import job_status
from q7x2_deploy.executor.supervise import JobFailed
from q7x2_deploy.executor.up import up
from q7x2_deploy.executor.image_delivery import deliver_image
from q7x2_deploy.plan import Mount


def _docker_ok() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


# Real containers on the root engine through a real sshd: seconds per test, so not in the fast tier.
pytestmark = [pytest.mark.skipif(not _docker_ok(), reason="no Docker engine answers"), pytest.mark.slow]


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("Q7X2_RUNS_DIR", str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def image() -> str:
    return ensure_test_image()


def _settings(server: LocalSSHD, tmp: Path) -> dict[str, object]:
    known = tmp / f"known_hosts_{server.port}"
    known.write_text(server.known_hosts_line())
    return {"user": "root", "port": server.port, "identity": str(server.identity), "known_hosts": str(known)}


@pytest.fixture
def job(request: pytest.FixtureRequest) -> Iterator[str]:
    from tests import isolation

    # The slot keeps concurrent test sessions on one engine from stopping each other's jobs.
    name = "t-" + request.node.name.replace("_", "-")[5:30].strip("-").lower() + (f"-s{isolation.slot()}" if isolation.slot() else "")
    yield name
    for cid in subprocess.run(["docker", "ps", "-aq", "--filter", f"label=q7x2.job={name}"],
                              capture_output=True, text=True).stdout.split():
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def _train(n: int, sleep: float = 0.2) -> str:
    lines = "; ".join(f"echo '{megatron_line(i, n, 2.0 - 0.1 * i)}'; sleep {sleep}" for i in range(1, n + 1))
    return lines


def test_up_runs_phases_in_order_then_status_logs_down(sshd: LocalSSHD, tmp_path: Path, image: str, job: str) -> None:
    s = _settings(sshd, tmp_path)
    plan = make_plan(job, {"h0": s, "h1": s}, {
        "h0": [("convert", "prepare", "echo converting; sleep 1; echo convert-done"),
               ("pretrain", "train", _train(3))],
        "h1": [("pretrain", "train", "echo rank1 training >&2; " + _train(3))],
    }, tmp_path / "hosts")
    out = io.StringIO()
    bystander = subprocess.run(["docker", "run", "-d", "--label", "q7x2.job=someone-else", image, "sleep", "60"],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        with open_cluster(plan, ssh_factory()) as cluster:
            sink = LogSink(job, echo=True, stream=out)
            assert up(cluster, sink) == 0
            sink.close()
            text = out.getvalue()
            assert "[h0 0] convert-done" in text and "[h1 1] rank1 training" in text
            assert "[h1 1]  [2026-11-28 04:00:00] iteration        3/       3" in text
            # barrier: training starts only after the prepare phase finished
            assert text.index("h0: convert finished") < text.index("h0: pretrain started")
            assert text.index("h0: convert finished") < text.index("h1: pretrain started")
            assert json.loads(Path(plan.hosts[1].job_file).read_text())["job"]["name"] == job
            assert "iteration        3/" in (run_dir(job) / "h1.log").read_text()

            rows = {r.host: r for r in job_status(cluster)}
            assert rows["h0"].steps == {"convert": "exited(0)", "pretrain": "exited(0)"}
            p = rows["h1"].progress
            assert p is not None and p.iteration == 3 and p.lm_loss == pytest.approx(1.7)
            assert p.tflops_per_device == pytest.approx(1.5)

            out2 = io.StringIO()
            assert up(cluster, LogSink(job, stream=out2)) == 0
            assert "already finished" in out2.getvalue()

            merged = io.StringIO()
            show_logs(cluster, LogSink(job, stream=merged, keep_files=False))
            lines = merged.getvalue().splitlines()
            assert lines[0] == "[h0 0] converting" and any(ln.startswith("[h1 1] rank1") for ln in lines)

            removed = [cluster.runtime(h).remove_job(job) for h in cluster.hosts]
            assert sum(removed) == 3
            assert [cluster.runtime(h).remove_job(job) for h in cluster.hosts] == [0, 0]  # idempotent
            assert (run_dir(job) / "result.json").exists()

            # Starting over is a new attempt: its logs do not mix with the first one's.
            out3 = io.StringIO()
            sink3 = LogSink(job, stream=out3)
            assert up(cluster, sink3) == 0
            sink3.close()
            earlier = [d for d in (run_dir(job) / "earlier").iterdir()]
            assert len(earlier) == 1 and f"previous one's logs are in {earlier[0]}" in out3.getvalue()
            assert (earlier[0] / "h1.log").read_text().count("iteration        3/") == 1
            assert (run_dir(job) / "h1.log").read_text().count("iteration        3/") == 1
            assert (run_dir(job) / "result.json").exists()
            assert sum(cluster.runtime(h).remove_job(job) for h in cluster.hosts) == 3
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", bystander],
                               capture_output=True, text=True).stdout.strip()
        assert state == "true"  # never touches other containers
    finally:
        subprocess.run(["docker", "rm", "-f", bystander], capture_output=True)


def test_failed_container_stops_the_job_everywhere(sshd: LocalSSHD, tmp_path: Path, image: str, job: str) -> None:
    s = _settings(sshd, tmp_path)
    plan = make_plan(job, {"h0": s, "h1": s}, {
        "h0": [("pretrain", "train", "echo waiting; sleep 120")],
        "h1": [("pretrain", "train", "echo about to fail; sleep 1; echo 'boom: out of memory'; "
                "echo 'Traceback (most recent call last):'; echo 'ValueError: bad shard 7'; exit 3")],
    }, tmp_path / "hosts")
    out = io.StringIO()
    with open_cluster(plan, ssh_factory()) as cluster:
        with pytest.raises(JobFailed, match=r"h1 \(rank 1\) failed in pretrain: container .* exited with status 3"):
            up(cluster, LogSink(job, stream=out))
        states = {h.name: cluster.runtime(h).list_job(job) for h in cluster.hosts}
    assert "boom: out of memory" in out.getvalue().split("last lines from h1")[1]
    assert not any(c.running for c in states["h0"].values())  # the healthy host was stopped
    # The likely cause comes first after the stop, names the host, and is kept in result.json.
    assert "q7x2-deploy: likely cause: Python exception on h1 (rank 1): ValueError: bad shard 7" in out.getvalue()
    result = json.loads((run_dir(job) / "result.json").read_text())
    assert result["status"] == "failed" and result["diagnosis"]["host"] == "h1"
    assert result["failure"]["step"] == "pretrain"


def test_lost_host_fails_the_job_and_names_it(sshd: LocalSSHD, tmp_path: Path, image: str, job: str) -> None:
    other = start_sshd(tmp_path / "sshd-h1")
    plan = make_plan(job, {"h0": _settings(sshd, tmp_path), "h1": _settings(other, tmp_path)}, {
        "h0": [("pretrain", "train", "sleep 120")],
        "h1": [("pretrain", "train", "echo h1 running; sleep 120")],
    }, tmp_path / "hosts")
    out = io.StringIO()

    def _cut() -> None:  # the host's sshd and all its sessions vanish
        deadline = time.monotonic() + 30
        while "h1: pretrain started" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        doomed = _children(other.proc.pid)
        other.proc.kill()
        for child in doomed:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass

    cutter = threading.Thread(target=_cut)
    try:
        with open_cluster(plan, ssh_factory()) as cluster:
            cutter.start()
            with pytest.raises(JobFailed, match=r"h1 \(rank 1\) failed .*(stopped answering|connection lost)"):
                up(cluster, LogSink(job, stream=out))
            assert not any(c.running for c in cluster.runtime("h0").list_job(job).values())
    finally:
        cutter.join()
        other.proc.kill()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out += [int(k), *_children(int(k))]
    return out


def test_detach_then_rerun_attaches_and_lock_refuses_second_up(sshd: LocalSSHD, tmp_path: Path, image: str, job: str) -> None:
    s = _settings(sshd, tmp_path)
    plan = make_plan(job, {"h0": s, "h1": s}, {
        "h0": [("pretrain", "train", "echo started-0; sleep 15; echo finished-0")],
        "h1": [("pretrain", "train", "echo started-1; sleep 15; echo finished-1")],
    }, tmp_path / "hosts")
    with open_cluster(plan, ssh_factory()) as cluster:
        t0 = time.monotonic()
        assert up(cluster, LogSink(job, stream=io.StringIO()), detach=True) == 0
        assert time.monotonic() - t0 < 12  # returned while the steps still run (they sleep 15 s)
        time.sleep(2.5)
        rows = job_status(cluster)
        assert [(r.state, r.step) for r in rows] == [("running", "pretrain")] * 2
        # Each printed one line, then nothing: status says for how long (host clock, whole seconds).
        assert all(r.quiet_s is not None and 1 <= r.quiet_s < 15 for r in rows), [r.quiet_s for r in rows]
        with JobLock(run_dir(job) / "up.lock", job):
            with pytest.raises(DeployError, match="another `up` for job .* is running"):
                up(cluster, LogSink(job, stream=io.StringIO()))
        out = io.StringIO()
        assert up(cluster, LogSink(job, stream=out)) == 0
        assert "already running (train phase on h0, h1); attaching" in out.getvalue()
        assert "[h0 0] finished-0" in out.getvalue() and "[h1 1] finished-1" in out.getvalue()


def test_up_says_when_every_host_has_been_quiet(sshd: LocalSSHD, tmp_path: Path, image: str, job: str) -> None:
    s = _settings(sshd, tmp_path)
    plan = make_plan(job, {"h0": s, "h1": s}, {
        "h0": [("convert", "prepare", "for i in $(seq 30); do echo tick$i; sleep 0.1; done"),
               ("pretrain", "train", "echo waiting-for-peers; sleep 7")],
        "h1": [("pretrain", "train", "echo waiting-for-peers; sleep 7")],
    }, tmp_path / "hosts")
    out = io.StringIO()
    with open_cluster(plan, ssh_factory()) as cluster:
        assert up(cluster, LogSink(job, stream=out), quiet_warning_s=2.5) == 0
    text = out.getvalue()
    # A line every 0.1 s: never quiet for 2.5 s, though a busy machine delays a stream by a second.
    assert "in phase prepare" not in text
    warnings = [int(x) for x in re.findall(r"no output from any host for (\d+)s in phase train, though every "
                                           r"host answers", text)]
    # Repeated, each later than the last while the quiet lasts (a host's first line starts it
    # over: on a busy machine the two containers' first lines can be a second apart).
    assert len(warnings) >= 2 and max(warnings) > min(warnings), text


def _detach_and_follow(cluster: Cluster, job: str) -> tuple[io.StringIO, threading.Event, threading.Thread]:
    """Start the job detached, then `logs -f` it in a thread: its output, its stop, the thread."""
    up(cluster, LogSink(job, stream=io.StringIO()), detach=True)
    out, stop = io.StringIO(), threading.Event()
    follower = threading.Thread(target=follow_logs, args=(cluster, LogSink(job, stream=out, keep_files=False)),
                                kwargs={"stop": stop})
    follower.start()
    return out, stop, follower


def test_follow_logs_until_stopped(sshd: LocalSSHD, tmp_path: Path, image: str, job: str) -> None:
    s = _settings(sshd, tmp_path)
    plan = make_plan(job, {"h0": s, "h1": s}, {
        "h0": [("pretrain", "train", "for i in 1 2 3; do echo a$i; sleep 0.5; done")],
        "h1": [("pretrain", "train", "for i in 1 2 3; do echo b$i; sleep 0.5; done")],
    }, tmp_path / "hosts")
    with open_cluster(plan, ssh_factory()) as cluster:
        out, stop, follower = _detach_and_follow(cluster, job)
        deadline = time.monotonic() + 20
        while not ("[h0 0] a3" in out.getvalue() and "[h1 1] b3" in out.getvalue()) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        follower.join(10)
    lines = out.getvalue().splitlines()
    assert [ln for ln in lines if ln.startswith("[h0 0]")] == ["[h0 0] a1", "[h0 0] a2", "[h0 0] a3"]
    assert [ln for ln in lines if ln.startswith("[h1 1]")] == ["[h1 1] b1", "[h1 1] b2", "[h1 1] b3"]


def test_preflight_reports_missing_mounts_and_busy_master_port(sshd: LocalSSHD, tmp_path: Path, image: str, job: str) -> None:
    s = _settings(sshd, tmp_path)
    plan = make_plan(job, {"h0": s, "h1": s}, {"h0": [("pretrain", "train", "true")],
                                              "h1": [("pretrain", "train", "true")]}, tmp_path / "hosts")
    with open_cluster(plan, ssh_factory()) as cluster:
        reports = preflight(cluster)
    assert failure_message(reports) is None, failure_message(reports)
    assert reports[0].get("image").detail.startswith("sha256:")  # type: ignore[union-attr]
    assert reports[0].get("port").level == "ok" and reports[1].get("port").level == "skip"  # type: ignore[union-attr]

    h1 = plan.hosts[1]
    plan.hosts[1] = replace(h1, mounts=[Mount("/nonexistent-q7x2", "/x"), *h1.mounts], devices=["/dev/davinci7"])
    with socket.socket() as busy, open_cluster(plan, ssh_factory()) as cluster:
        busy.bind(("0.0.0.0", plan.master_port))
        busy.listen()
        reports = preflight(cluster)
    msg = failure_message(reports)
    assert msg is not None and f"h0: port: already in use: master port {plan.master_port}" in msg
    assert "h1: devices: missing on host: /dev/davinci7, /nonexistent-q7x2" in msg


def test_image_delivery_over_ssh_streams_docker_save_into_docker_load(sshd: LocalSSHD, tmp_path: Path, image: str, job: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(sshd, tmp_path)
    plan = make_plan(job, {"h0": s, "h1": s}, {"h0": [], "h1": []}, tmp_path / "hosts")
    monkeypatch.setenv("Q7X2_PROGRESS_SECONDS", "0")  # a line per chunk: the figures are under test
    lines: list[str] = []
    with open_cluster(plan, ssh_factory()) as cluster:
        skipped = deliver_image(cluster)
        assert [d.action for d in skipped] == ["skipped", "skipped"]  # same image ID already there
        loaded = deliver_image(cluster, known_ids={"h0": None, "h1": "sha256:other"}, progress=lines.append)
        assert [d.action for d in loaded] == ["loaded", "loaded"]
        sent = [ln for ln in lines if ln.startswith("q7x2-deploy: image sent: h0 ")]
        assert sent, lines  # bytes per host, as `up` prints them outside a terminal
        archive = len(b"".join(_save_archive(TEST_IMAGE)))
        from q7x2_runtime.progress import human_bytes

        assert f"h0 {human_bytes(archive)}, h1 {human_bytes(archive)} of ~" in sent[-1], sent[-1]
        assert loaded[0].image_id == subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Id}}", TEST_IMAGE], capture_output=True, text=True).stdout.strip()
        bad = make_plan(job, {"h0": s}, {"h0": []}, tmp_path / "hosts", image="q7x2-test/absent:0")
    with open_cluster(bad, ssh_factory()) as cluster, pytest.raises(DeployError, match="build-image"):
        deliver_image(cluster)


def _save_archive(ref: str) -> list[bytes]:
    from q7x2_deploy.executor.image_delivery import _docker_save

    return list(_docker_save(ref))


def test_follow_logs_survives_a_dropped_connection(sshd: LocalSSHD, tmp_path: Path, image: str, job: str) -> None:
    s = _settings(sshd, tmp_path)
    plan = make_plan(job, {"h0": s}, {
        "h0": [("pretrain", "train", "for i in $(seq 1 12); do echo line$i; sleep 0.5; done")],
    }, tmp_path / "hosts")
    with open_cluster(plan, ssh_factory()) as cluster:
        out, stop, follower = _detach_and_follow(cluster, job)
        deadline = time.monotonic() + 30
        while "[h0 0] line3" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.1)
        cluster.transport("h0").connect().close()  # the connection drops mid-stream
        while "[h0 0] line12" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        follower.join(10)
    lines = out.getvalue().splitlines()
    assert any("reconnecting" in ln for ln in lines)
    assert [ln for ln in lines if ln.startswith("[h0 0]")] == [f"[h0 0] line{i}" for i in range(1, 13)]
