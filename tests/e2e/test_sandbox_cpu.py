"""The main job end to end on the session sandbox (2 hosts, cpu flavor, the sample model):
build + push, up (convert + preprocess + 2-node pretraining), loss falls, checkpoints where the
storage mode says, logs from both hosts, status, down — with shared and with per-node storage;
then a host's container fails and `up` must stop the other host and name the failed one."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests import isolation
from conftest import build_cpu_image
from e2e_support import (
    E2E_ROOT,
    cli,
    cli_background,
    derive_inventory,
    iteration_dirs,
    loss_curve,
    wait_for,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

TRAIN_ITERS = 30


@pytest.fixture(scope="module")
def image_ref(sandbox_cluster) -> str:  # type: ignore[no-untyped-def]
    ref = isolation.tag(f"{sandbox_cluster.registry}/q7x2/qwen25-cpu:e2e")
    build_cpu_image(ref, push=True)
    return ref


def _clean(sandbox_cluster, job: str) -> None:  # type: ignore[no-untyped-def]
    shutil.rmtree(sandbox_cluster.shared_dir / E2E_ROOT / job, ignore_errors=True)
    for i in range(len(sandbox_cluster.hosts)):
        shutil.rmtree(sandbox_cluster.data_dir(i) / E2E_ROOT / job, ignore_errors=True)


def _job_containers(sandbox_cluster, i: int, job: str) -> list:  # type: ignore[no-untyped-def]
    return sandbox_cluster.engine(i).containers.list(all=True, filters={"label": f"q7x2.job={job}"})


def _full_flow(sandbox_cluster, image_ref: str, tmp_path: Path, job: str, storage: str, port: int) -> dict:  # type: ignore[no-untyped-def]
    inv = derive_inventory(sandbox_cluster.inventory, tmp_path / "inv.yaml", job=job, image_ref=image_ref,
                           port=port, storage=storage, train_iters=TRAIN_ITERS)
    cli("down", str(inv), cwd=tmp_path)
    _clean(sandbox_cluster, job)
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    r = cli("check", str(inv), cwd=tmp_path, timeout=300)
    timings["check"] = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr

    t0 = time.monotonic()
    up = cli("up", str(inv), cwd=tmp_path, timeout=1500)
    timings["up"] = time.monotonic() - t0
    assert up.returncode == 0, f"{up.stdout[-4000:]}\n{up.stderr[-2000:]}"
    out = up.stdout
    assert "[sbx-1 0]" in out and "[sbx-2 1]" in out
    assert out.index("sbx-1: preprocess finished") < out.index("sbx-1: pretrain started")

    curve = loss_curve(out)
    assert curve and curve[-1][0] == TRAIN_ITERS, curve[-3:]
    first = sum(v for _, v in curve[:3]) / 3
    last = sum(v for _, v in curve[-3:]) / 3
    assert last < first, f"loss did not fall: {first:.3f} -> {last:.3f}"

    logs = cli("logs", str(inv), cwd=tmp_path, timeout=300)
    assert logs.returncode == 0, logs.stderr
    assert "[sbx-1 0] converted" in logs.stdout and "[sbx-2 1] training finished" in logs.stdout
    assert (tmp_path / ".q7x2" / "runs" / job / "sbx-2.log").read_text().count("iteration") >= TRAIN_ITERS

    st = cli("status", str(inv), "--json", cwd=tmp_path, timeout=300)
    assert st.returncode == 0, st.stderr
    hosts = {h["host"]: h for h in json.loads(st.stdout)["hosts"]}
    assert hosts["sbx-1"]["steps"]["pretrain"] == "exited(0)" and hosts["sbx-2"]["state"] == "exited"
    assert hosts["sbx-2"]["progress"]["iteration"] == TRAIN_ITERS

    again = cli("up", str(inv), cwd=tmp_path, timeout=300)  # converged: nothing to do
    assert again.returncode == 0 and "already finished" in again.stdout

    assert cli("down", str(inv), cwd=tmp_path).returncode == 0
    assert _job_containers(sandbox_cluster, 0, job) == [] and _job_containers(sandbox_cluster, 1, job) == []
    assert cli("down", str(inv), cwd=tmp_path).returncode == 0  # idempotent
    return {"out": out, "timings": timings, "first_loss": first, "last_loss": last}


def test_shared_storage(sandbox_cluster, image_ref: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = "e2e-shared"
    res = _full_flow(sandbox_cluster, image_ref, tmp_path, job, "shared", 6211)
    out = res["out"]
    assert "sbx-2: convert started" not in out  # shared storage: only rank 0 prepares
    ckpt = sandbox_cluster.shared_dir / E2E_ROOT / job / "ckpt"
    assert f"iter_{TRAIN_ITERS:07d}" in iteration_dirs(ckpt)
    print(f"\nshared: {res['timings']} loss {res['first_loss']:.3f} -> {res['last_loss']:.3f}")


def test_per_node_storage(sandbox_cluster, image_ref: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = "e2e-pernode"
    res = _full_flow(sandbox_cluster, image_ref, tmp_path, job, "per-node", 6212)
    out = res["out"]
    assert "sbx-1: convert finished" in out and "sbx-2: convert finished" in out  # every node prepares
    # Each node writes on its own disk what Megatron writes from its ranks: at tp 1 pp 1 the one rank
    # directory and the tracker come from global rank 0 (node 1 holds none of it until replication).
    ckpt0 = sandbox_cluster.data_dir(0) / E2E_ROOT / job / "ckpt"
    assert f"iter_{TRAIN_ITERS:07d}" in iteration_dirs(ckpt0)
    assert (ckpt0 / "latest_checkpointed_iteration.txt").read_text() == str(TRAIN_ITERS)
    assert not (sandbox_cluster.shared_dir / E2E_ROOT / job).exists()
    print(f"\nper-node: {res['timings']} loss {res['first_loss']:.3f} -> {res['last_loss']:.3f}")


def test_failed_container_stops_the_job_and_names_the_host(sandbox_cluster, image_ref: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = "e2e-fail"
    inv = derive_inventory(sandbox_cluster.inventory, tmp_path / "inv.yaml", job=job, image_ref=image_ref,
                           port=6213, train_iters=100_000, job__recovery__max_restarts=0)
    cli("down", str(inv), cwd=tmp_path)
    _clean(sandbox_cluster, job)
    log = tmp_path / "up.log"
    proc = cli_background("up", str(inv), cwd=tmp_path, log=log)
    try:
        wait_for(log, "[sbx-2 1]  [", 900, proc)  # training is running on rank 1
        t_kill = time.monotonic()
        sandbox_cluster.engine(1).containers.get(f"q7x2-{job}-pretrain-1").kill()
        rc = proc.wait(timeout=180)
        reaction = time.monotonic() - t_kill
        text = log.read_text()
        assert rc != 0
        assert "sbx-2 (rank 1) failed in pretrain: container q7x2-e2e-fail-pretrain-1 exited with status 137" in text
        assert "last lines from sbx-2" in text
        # The diagnosis after the stop names the host whose container died, not the survivor.
        assert "q7x2-deploy: likely cause: " in text and " on sbx-2 (rank 1)" in text.split("likely cause: ")[1].splitlines()[0]
        result = json.loads((tmp_path / ".q7x2" / "runs" / job / "result.json").read_text())
        assert result["status"] == "failed" and result["diagnosis"]["host"] == "sbx-2"
        running = [c for c in _job_containers(sandbox_cluster, 0, job) if c.status == "running"]
        assert running == []  # the healthy host's training was stopped
        print(f"\nfail-fast reaction {reaction:.1f}s")
    finally:
        if proc.poll() is None:
            proc.kill()
        cli("down", str(inv), cwd=tmp_path)
        _clean(sandbox_cluster, job)


def test_ctrl_c_stops_the_job_everywhere(sandbox_cluster, image_ref: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import signal

    job = "e2e-sigint"
    inv = derive_inventory(sandbox_cluster.inventory, tmp_path / "inv.yaml", job=job, image_ref=image_ref,
                           port=6214, train_iters=100_000)
    cli("down", str(inv), cwd=tmp_path)
    _clean(sandbox_cluster, job)
    log = tmp_path / "up.log"
    proc = cli_background("up", str(inv), cwd=tmp_path, log=log)
    try:
        wait_for(log, "[sbx-2 1]  [", 900, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
        assert "stopping job e2e-sigint on every host" in log.read_text()
        for i in range(2):
            assert [c for c in _job_containers(sandbox_cluster, i, job) if c.status == "running"] == []
    finally:
        if proc.poll() is None:
            proc.kill()
        cli("down", str(inv), cwd=tmp_path)
        _clean(sandbox_cluster, job)


def test_check_verifies_host_keys(sandbox_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    known = tmp_path / "known_hosts"
    known.write_text("")
    inv = derive_inventory(sandbox_cluster.inventory, tmp_path / "inv.yaml", job="e2e-keys",
                           image_ref="q7x2/none:0", port=6215, ssh__known_hosts=str(known))
    r = cli("check", str(inv), cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    assert "unknown host key" in r.stdout + r.stderr and "--accept-new-host-keys" in r.stdout + r.stderr
    r = cli("check", str(inv), "--accept-new-host-keys", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(known.read_text().splitlines()) == 2
    # A changed key is refused even with the flag.
    import subprocess

    lines = known.read_text().splitlines()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    kind, forged = (tmp_path / "k.pub").read_text().split()[:2]
    known.write_text(lines[0] + "\n" + f"{lines[1].split()[0]} {kind} {forged}\n")
    r = cli("check", str(inv), "--accept-new-host-keys", cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "CHANGED" in r.stdout + r.stderr
