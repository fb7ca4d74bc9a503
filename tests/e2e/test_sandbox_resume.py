"""Stop a job after a save, `up` again: it resumes at the saved iteration and the next iterations'
losses (and the final weights) are those of an uninterrupted run. The session sandbox (2 hosts,
cpu image, the sample model), the ascend argument builder feeding the CPU trainer, shared storage,
at tp 1 pp 1 and at tp 2 (two hosts x one process each)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import isolation
from conftest import build_cpu_image
from e2e_support import E2E_ROOT, cli, cli_background, derive_inventory, loss_curve, wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

ITERS = 100  # the sample trains ~3 iterations/s: the job is still training when it is stopped after the first save
SAVED = "saved checkpoint at iteration       10"


@pytest.fixture(scope="module")
def image_ref(sandbox_cluster) -> str:  # type: ignore[no-untyped-def]
    ref = isolation.tag(f"{sandbox_cluster.registry}/q7x2/qwen25-cpu:e2e")
    build_cpu_image(ref, push=True)
    return ref


def _fresh(sandbox_cluster, tmp_path: Path, job: str, image_ref: str, port: int, **overrides) -> Path:  # type: ignore[no-untyped-def]
    # No automatic recovery: the test itself stops the job and starts it again.
    inv = derive_inventory(sandbox_cluster.inventory, tmp_path / f"{job}.yaml", job=job, image_ref=image_ref,
                           port=port, train_iters=ITERS, job__recovery__max_restarts=0, **overrides)
    cli("down", str(inv), cwd=tmp_path)
    shutil.rmtree(sandbox_cluster.shared_dir / E2E_ROOT / job, ignore_errors=True)
    return inv


def _up(inv: Path, tmp_path: Path) -> str:
    up = cli("up", str(inv), cwd=tmp_path, timeout=1500)
    assert up.returncode == 0, f"{up.stdout[-4000:]}\n{up.stderr[-2000:]}"
    return up.stdout


@pytest.mark.parametrize("layout, port, overrides", [
    # tp 2 in CI: the harder layout (each host saves half of every iteration); tp1 pp1 with Q7X2_LONG=1.
    pytest.param("tp1pp1", 6221, {}, marks=pytest.mark.long),
    ("tp2", 6223, {"job__parallelism__tp": 2}),
])  # fmt: skip
def test_stopped_job_resumes_where_it_saved(sandbox_cluster, image_ref: str, tmp_path: Path, layout: str, port: int,  # type: ignore[no-untyped-def]
                                            overrides: dict) -> None:
    from q7x2_runtime.convert.api import load_mcore_as_hf_state_dict, read_latest_iteration
    import torch

    ref_inv = _fresh(sandbox_cluster, tmp_path, f"e2e-ref-{layout}", image_ref, port, **overrides)
    reference = dict(loss_curve(_up(ref_inv, tmp_path)))
    assert sorted(reference) == list(range(1, ITERS + 1))

    job = f"e2e-res-{layout}"
    inv = _fresh(sandbox_cluster, tmp_path, job, image_ref, port + 1, **overrides)
    log = tmp_path / "interrupted.log"
    proc = cli_background("up", str(inv), cwd=tmp_path, log=log)
    try:
        wait_for(log, SAVED, 900, proc)
        # A host's training dies (perhaps in the middle of a later save): `up` stops the other host.
        sandbox_cluster.engine(1).containers.get(f"q7x2-{job}-pretrain-1").kill()
        assert proc.wait(timeout=300) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert cli("down", str(inv), cwd=tmp_path).returncode == 0
    ckpt = sandbox_cluster.shared_dir / E2E_ROOT / job / "ckpt"
    saved = read_latest_iteration(ckpt)  # the tracker moves last: the newest complete iteration
    assert saved is not None and 10 <= saved < ITERS, saved
    before = dict(loss_curve(log.read_text()))
    assert all(before[i] == reference[i] for i in range(1, saved + 1))

    out = _up(inv, tmp_path)
    for host in ("sbx-1", "sbx-2"):
        assert f"start point: resume from /shared/{E2E_ROOT}/{job}/ckpt at iteration {saved}" in out, host
    assert f"successfully loaded checkpoint from /shared/{E2E_ROOT}/{job}/ckpt" in out
    assert f"at iteration {saved} (optimizer and RNG state)" in out
    resumed = dict(loss_curve(out))
    assert sorted(resumed) == list(range(saved + 1, ITERS + 1))
    assert resumed == {i: reference[i] for i in range(saved + 1, ITERS + 1)}
    # and the final weights are bit for bit the uninterrupted run's
    _, a = load_mcore_as_hf_state_dict(sandbox_cluster.shared_dir / E2E_ROOT / f"e2e-ref-{layout}" / "ckpt")
    _, b = load_mcore_as_hf_state_dict(ckpt)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in (f"e2e-ref-{layout}", job):
        cli("down", str(tmp_path / f"{name}.yaml"), cwd=tmp_path)
