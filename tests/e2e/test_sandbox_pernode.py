"""Per-node storage end to end on the session sandbox (2 hosts, cpu image, the sample model, tp 2 so
each host writes its own half of every checkpoint), in the default mode without job.paths.replica:
each node's copies go to the other host through the deployer, every host ends with the tracker and
the whole iteration; a job stopped after a save and started again with one host's save_dir (and the
store in it) deleted is restored from the other host's copies and resumes with the losses of an
uninterrupted run; `collect` gathers a checkpoint whose HF conversion gives the trained model's
logits. The job.paths.replica mode is covered by the replicator's and status's unit tests."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import build_cpu_image
from e2e_support import E2E_ROOT, cli, derive_inventory, loss_curve
from tests import isolation

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

# The sample trains a few iterations/s: 120 leaves the test half a minute or more to stop the job
# after its first replicated save (10) and before it ends.
# Long enough that the job is still training when part 3 stops it (120 finished first on a fast machine).
TRAIN_ITERS = 360
TRACKER = "latest_checkpointed_iteration.txt"


@pytest.fixture(scope="module")
def image_ref(sandbox_cluster) -> str:  # type: ignore[no-untyped-def]
    ref = isolation.tag(f"{sandbox_cluster.registry}/q7x2/qwen25-cpu:e2e")
    build_cpu_image(ref, push=True)
    return ref


def _inventory(sandbox_cluster, tmp_path: Path, job: str, image_ref: str, port: int) -> Path:  # type: ignore[no-untyped-def]
    inv = derive_inventory(sandbox_cluster.inventory, tmp_path / f"{job}.yaml", job=job, image_ref=image_ref, port=port,
                           storage="per-node", train_iters=TRAIN_ITERS, job__parallelism__tp=2,
                           job__training__save_interval=10)
    cli("down", str(inv), cwd=tmp_path)
    shutil.rmtree(sandbox_cluster.shared_dir / E2E_ROOT / job, ignore_errors=True)
    for i in range(2):
        shutil.rmtree(sandbox_cluster.data_dir(i) / E2E_ROOT / job, ignore_errors=True)
    return inv


def _save_dir(sandbox_cluster, i: int, job: str) -> Path:  # type: ignore[no-untyped-def]
    return sandbox_cluster.data_dir(i) / E2E_ROOT / job / "ckpt"


def _store(sandbox_cluster, i: int, job: str) -> Path:  # type: ignore[no-untyped-def]
    """Host i's replica store: its own copies and the other host's."""
    return _save_dir(sandbox_cluster, i, job) / ".q7x2-replicas"


def _tracker(save_dir: Path) -> int | None:
    try:
        return int((save_dir / TRACKER).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _status(inv: Path, tmp_path: Path) -> dict:
    st = cli("status", str(inv), "--json", cwd=tmp_path, timeout=300)
    assert st.returncode == 0, st.stdout + st.stderr
    return json.loads(st.stdout)


def _logits(model_dir_or_state, config_dir: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoConfig, Qwen2ForCausalLM

    if isinstance(model_dir_or_state, Path):
        model = Qwen2ForCausalLM.from_pretrained(model_dir_or_state, torch_dtype=torch.float32)
    else:
        model = Qwen2ForCausalLM(AutoConfig.from_pretrained(config_dir))
        model.load_state_dict(model_dir_or_state, strict=True)
    model.eval()
    ids = torch.arange(1, 33).reshape(2, 16) * 7 % 1000
    with torch.no_grad():
        return model(ids).logits


def test_replicate_resume_restore_and_collect(sandbox_cluster, image_ref: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # 1. An uninterrupted run: the reference losses; every save replicated, every host holds it.
    ref_job = "e2e-pn-ref"
    ref_inv = _inventory(sandbox_cluster, tmp_path, ref_job, image_ref, 6231)
    up = cli("up", str(ref_inv), cwd=tmp_path, timeout=1500)
    assert up.returncode == 0, f"{up.stdout[-4000:]}\n{up.stderr[-2000:]}"
    reference = dict(loss_curve(up.stdout))
    assert sorted(reference) == list(range(1, TRAIN_ITERS + 1))
    for i in range(2):
        save_dir = _save_dir(sandbox_cluster, i, ref_job)
        assert _tracker(save_dir) == TRAIN_ITERS, f"host {i} lacks the tracker"
        for t in range(2):  # the whole iteration on each host, though each wrote only its half
            assert (save_dir / f"iter_{TRAIN_ITERS:07d}" / f"mp_rank_0{t}" / "model_optim_rng.pt").is_file()
    for i in range(2):  # each node's last save is on the other host too
        assert (_store(sandbox_cluster, 1 - i, ref_job) / f"node-{i}" / f"iter_{TRAIN_ITERS:07d}.json").is_file()
    status = _status(ref_inv, tmp_path)
    assert status["replication"]["fully_replicated_iteration"] == TRAIN_ITERS
    assert {h["host"]: h["replica_iteration"] for h in status["hosts"]} == {"sbx-1": TRAIN_ITERS, "sbx-2": TRAIN_ITERS}
    table = cli("status", str(ref_inv), cwd=tmp_path, timeout=300)
    assert f"iteration {TRAIN_ITERS} fully replicated" in " ".join(table.stdout.split()), table.stdout
    assert "replica" in table.stdout.splitlines()[1]  # the column, never cut short in a pipe

    # 2. collect: each host's half into one directory, complete; its HF conversion loads and gives
    # the logits of the model the trainer saved (its own files, each read from the host that wrote it).
    dest, hf = tmp_path / "collected", tmp_path / "hf"
    sample_model = sandbox_cluster.shared_dir / "sample" / "model"
    col = cli("collect", str(ref_inv), str(dest), "--to-hf", str(hf), "--hf-template", str(sample_model),
              cwd=tmp_path, timeout=900)
    assert col.returncode == 0, col.stdout + col.stderr
    assert f"iteration {TRAIN_ITERS} of job {ref_job}, complete" in col.stdout
    assert _tracker(dest) == TRAIN_ITERS
    originals = tmp_path / "originals"
    it = f"iter_{TRAIN_ITERS:07d}"
    for t in range(2):
        (originals / it).mkdir(parents=True, exist_ok=True)
        (originals / it / f"mp_rank_0{t}").symlink_to(_save_dir(sandbox_cluster, t, ref_job) / it / f"mp_rank_0{t}")
    (originals / TRACKER).write_text(str(TRAIN_ITERS))
    from q7x2_runtime.convert.api import load_mcore_as_hf_state_dict

    _dims, trained = load_mcore_as_hf_state_dict(originals)
    import torch

    assert torch.allclose(_logits(hf, sample_model), _logits(trained, sample_model), rtol=0, atol=1e-6)
    again = cli("collect", str(ref_inv), str(dest), cwd=tmp_path, timeout=300)
    assert again.returncode != 0 and "not empty" in again.stderr
    assert cli("down", str(ref_inv), cwd=tmp_path).returncode == 0

    # 3. Stop a job after a save, delete the save_dir of the host that wrote half of it, start again.
    job = "e2e-pn-res"
    inv = _inventory(sandbox_cluster, tmp_path, job, image_ref, 6232)
    det = cli("up", str(inv), "--detach", cwd=tmp_path, timeout=1500)
    assert det.returncode == 0, det.stdout + det.stderr
    deadline = time.monotonic() + 900
    def _both_replicated() -> set[str]:  # on the other host; the copies may skip to the newest save
        marks = [{m.name for m in (_store(sandbox_cluster, 1 - i, job) / f"node-{i}").glob("iter_*.json")}
                 for i in range(2)]
        return marks[0] & marks[1]

    while not _both_replicated():
        assert time.monotonic() < deadline, "no save was ever replicated from both nodes"
        time.sleep(0.5)
    assert cli("down", str(inv), cwd=tmp_path).returncode == 0
    saved = _status(inv, tmp_path)["replication"]["fully_replicated_iteration"]
    assert saved is not None and saved < TRAIN_ITERS, f"stopped too late ({saved}); raise TRAIN_ITERS"
    shutil.rmtree(_save_dir(sandbox_cluster, 0, job))
    up = cli("up", str(inv), cwd=tmp_path, timeout=1500)
    assert up.returncode == 0, f"{up.stdout[-4000:]}\n{up.stderr[-2000:]}"
    assert "restored into the replica store of sbx-1" in up.stdout, up.stdout[-4000:]
    assert "file(s) of iteration" in up.stdout and "copied from the replica" in up.stdout
    # Both nodes resume from one iteration: the newest complete one, which is at least the one the
    # replica store held entirely when the job stopped (a later save may have been complete on the
    # surviving host and in the store without the store's marker of every node yet).
    starts = {int(m.group(2)) for m in re.finditer(
        r"node (\d): start point: resume from \S+ at iteration (\d+)", up.stdout)}
    assert len(starts) == 1, [ln for ln in up.stdout.splitlines() if "start point" in ln]
    resumed_at = starts.pop()
    assert saved <= resumed_at < TRAIN_ITERS, (saved, resumed_at)
    resumed = dict(loss_curve(up.stdout))
    assert min(resumed) == resumed_at + 1 and max(resumed) == TRAIN_ITERS
    assert resumed == {n: reference[n] for n in resumed}, "the resumed run's losses differ from the uninterrupted run's"
    for i in range(2):
        assert _tracker(_save_dir(sandbox_cluster, i, job)) == TRAIN_ITERS
    assert cli("down", str(inv), cwd=tmp_path).returncode == 0
    print(f"\nper-node: fully replicated {saved} at the stop, resumed at {resumed_at}, {len(resumed)} losses equal the reference")
