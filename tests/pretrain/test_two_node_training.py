"""Two nodes on loopback train the tiny Qwen2.5 with the CPU engine driven by MindSpeed-LLM's argument
list: the loss falls, checkpoints land in Megatron's layout for the job's tp/pp (optimizer and RNG
state included), and a stopped-and-resumed run reproduces the uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from q7x2_runtime.convert.api import load_mcore_as_hf_state_dict, read_latest_iteration
from q7x2_runtime.pretrain.complete import Layout, complete_iterations
from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.pretrain.log_parse import parse_log
from tests.pretrain.cluster_helpers import PP, TP, Prepared, free_port, prepare, run_nodes, write_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ITERS = 30


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Prepared:
    return prepare(tmp_path_factory.mktemp("pretrain"))


@pytest.fixture(scope="module")
def uninterrupted(prepared: Prepared) -> dict:
    job = write_job(prepared, "full", port=free_port(), train_iters=ITERS)
    results = run_nodes(job, [0, 1])
    for r in results:
        assert r.returncode == 0, r.output[-3000:]
    return {"job": job, "results": results, "ckpt": prepared.root / "full" / "ckpt"}


def _losses(text: str) -> dict[int, float]:
    return {r.iteration: r.lm_loss for r in parse_log(text)}


def test_every_node_reports_its_placement_and_start(uninterrupted: dict, prepared: Prepared) -> None:
    for r in uninterrupted["results"]:
        assert f"node rank {r.node_rank} of 2" in r.output
        assert "world size 2, master 127.0.0.1:" in r.output
        assert f"start point: first start from the converted weights {prepared.mcore}" in r.output
    last = uninterrupted["results"][1].output
    assert "successfully loaded checkpoint from" in last and "at iteration 0 (no optimizer or RNG state, --finetune)" in last
    [listed] = [ln for ln in last.splitlines() if "no effect on cpu:" in ln]
    assert "--use-flash-attn" in listed and "--distributed-backend" in listed
    records = parse_log(last)
    assert all(r.throughput_tflops and r.throughput_tflops > 0 and r.tokens_per_second > 0 for r in records)


def test_loss_falls_and_log_parses(uninterrupted: dict) -> None:
    # The last rank (node 1's only process) prints the iteration lines, on stdout and in its log file.
    node1 = uninterrupted["results"][1]
    records = parse_log(node1.output)
    assert [r.iteration for r in records] == list(range(1, ITERS + 1))
    assert all(r.train_iters == ITERS and r.global_batch_size == 8 for r in records)
    assert records[-1].consumed_samples == ITERS * 8
    first = sum(r.lm_loss for r in records[:3]) / 3
    last = sum(r.lm_loss for r in records[-3:]) / 3
    assert last < first - 1.0, (first, last)
    log_file = uninterrupted["ckpt"].parent / "logs" / "pretrain_mcore_tiny_node1.log"
    assert _losses(log_file.read_text()) == _losses(node1.output)


def test_checkpoint_in_job_layout(uninterrupted: dict, prepared: Prepared) -> None:
    ckpt: Path = uninterrupted["ckpt"]
    assert read_latest_iteration(ckpt) == ITERS
    for it in (10, 20, 30):
        d = ckpt / f"iter_{it:07d}"
        ranks = sorted(p.name for p in d.iterdir() if p.is_dir())
        assert ranks == [f"mp_rank_{t:02d}_{p:03d}" for t in range(TP) for p in range(PP)], ranks
        for r in ranks:
            assert sorted(f.name for f in (d / r).iterdir()) == ["distrib_optim.pt", "model_optim_rng.pt"]
        rank_file = torch.load(d / ranks[0] / "model_optim_rng.pt", weights_only=False)
        assert rank_file["checkpoint_version"] == 3.0 and rank_file["iteration"] == it
        assert {"args", "model", "rng_state", "opt_param_scheduler"} <= rank_file.keys()
        assert "optimizer" not in rank_file  # with the distributed optimizer it is in distrib_optim.pt
        assert rank_file["args"].seq_length == 64 and rank_file["args"].consumed_train_samples == it * 8
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".")]  # no staging left behind
    job = JobSpec.load(uninterrupted["job"]).job
    assert complete_iterations(ckpt, Layout.of(job)) == [10, 20, 30]
    dims, trained = load_mcore_as_hf_state_dict(ckpt)
    dims0, initial = load_mcore_as_hf_state_dict(prepared.mcore)
    # Megatron records the --max-position-embeddings it trained with (the job's seq_length).
    assert dims == dims0.model_copy(update={"max_position_embeddings": 64}) and trained.keys() == initial.keys()
    assert trained["lm_head.weight"].dtype == torch.bfloat16
    assert not torch.equal(trained["model.layers.3.mlp.down_proj.weight"], initial["model.layers.3.mlp.down_proj.weight"])


def test_stop_and_resume_matches_uninterrupted(uninterrupted: dict, prepared: Prepared) -> None:
    job = write_job(prepared, "resumed", port=free_port(), train_iters=ITERS)
    first = run_nodes(job, [0, 1], "--exit-interval", "20")
    assert all(r.returncode == 0 for r in first), first[1].output[-3000:]
    assert read_latest_iteration(prepared.root / "resumed" / "ckpt") == 20
    assert max(_losses(first[1].output)) == 20

    job = write_job(prepared, "resumed", port=free_port(), train_iters=ITERS)  # a fresh master port
    second = run_nodes(job, [0, 1])
    assert all(r.returncode == 0 for r in second), second[1].output[-3000:]
    for r in second:
        assert f"start point: resume from {prepared.root / 'resumed' / 'ckpt'} at iteration 20" in r.output
    assert "successfully loaded checkpoint from" in second[1].output
    assert "at iteration 20 (optimizer and RNG state)" in second[1].output
    assert "--load " + str(prepared.root / "resumed" / "ckpt") in second[1].output
    resumed = _losses(second[1].output)
    assert sorted(resumed) == list(range(21, ITERS + 1))
    full = _losses(uninterrupted["results"][1].output)
    before = _losses(first[1].output)
    assert before == {i: full[i] for i in range(1, 21)}
    # The printed losses (7 significant digits) of iterations 21..30 are those of the uninterrupted run.
    assert resumed == {i: full[i] for i in range(21, ITERS + 1)}
    assert read_latest_iteration(prepared.root / "resumed" / "ckpt") == ITERS
    # and the final weights are bit-for-bit those of the uninterrupted run
    _, a = load_mcore_as_hf_state_dict(uninterrupted["ckpt"])
    _, b = load_mcore_as_hf_state_dict(prepared.root / "resumed" / "ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_single_node_refuses_a_checkpoint_of_another_model(prepared: Prepared) -> None:
    import json

    job = write_job(prepared, "mismatch", port=free_port(), nnodes=1, train_iters=2)
    spec = json.loads(job.read_text())
    spec["job"]["model"]["dims"]["ffn_hidden_size"] = 256
    job.write_text(json.dumps(spec))
    [result] = run_nodes(job, [0], timeout=120)
    assert result.returncode != 0
    assert "is not the job's model: ffn_hidden_size 128 (job: 256)" in result.output.splitlines()[-1]


def test_data_parallel_and_accumulation_are_one_global_batch(prepared: Prepared, uninterrupted: dict) -> None:
    """One process accumulating 4 micro batches trains like 2 nodes x 1 process accumulating 2."""
    job = write_job(prepared, "single", port=free_port(), nnodes=1, train_iters=ITERS, save_interval=ITERS)
    [result] = run_nodes(job, [0], "--exit-interval", "3", timeout=300)
    assert result.returncode == 0, result.output[-3000:]
    assert "gradient accumulation 4" in result.output
    single = _losses(result.output)
    full = _losses(uninterrupted["results"][1].output)
    assert sorted(single) == [1, 2, 3]
    for i in single:
        assert single[i] == pytest.approx(full[i], rel=1e-5), (i, single[i], full[i])


def test_lean_checkpoints_resume_without_optimizer_state(prepared: Prepared) -> None:
    job = write_job(prepared, "lean", port=free_port(), nnodes=1, train_iters=6, save_interval=3,
                    checkpoint={"keep_optimizer": False})  # fmt: skip
    [first] = run_nodes(job, [0], "--exit-interval", "3", timeout=300)
    assert first.returncode == 0, first.output[-3000:]
    assert "a resume will not continue exactly" in first.output
    rank_dir = prepared.root / "lean" / "ckpt" / "iter_0000003" / "mp_rank_00"
    assert sorted(p.name for p in rank_dir.iterdir()) == ["model_optim_rng.pt"]
    saved = torch.load(rank_dir / "model_optim_rng.pt", weights_only=False)
    assert "rng_state" not in saved and "opt_param_scheduler" not in saved and "optimizer" not in saved
    [second] = run_nodes(job, [0], timeout=300)
    assert second.returncode == 0, second.output[-3000:]
    assert f"start point: resume from {prepared.root / 'lean' / 'ckpt'} at iteration 3" in second.output
    assert "at iteration 3 (no optimizer or RNG state)" in second.output
    assert sorted(_losses(second.output)) == [4, 5, 6]


def test_a_checkpoint_of_another_layout_is_refused_not_loaded(prepared: Prepared) -> None:
    job = write_job(prepared, "foreign", port=free_port(), nnodes=1, train_iters=2)
    it = prepared.root / "foreign" / "ckpt" / "iter_0000010"
    for rank_dir in ("mp_rank_00_000", "mp_rank_00_001"):
        (it / rank_dir).mkdir(parents=True)
        torch.save({"model": {}}, it / rank_dir / "model_optim_rng.pt")
    (it.parent / "latest_checkpointed_iteration.txt").write_text("10")
    [result] = run_nodes(job, [0], timeout=120)
    assert result.returncode == 2
    last = result.output.strip().splitlines()[-1]
    assert "holds iteration 10 written with another tensor/pipeline layout (mp_rank_00_000, mp_rank_00_001)" in last
    assert "successfully loaded" not in result.output


def test_tensorboard_events_read_back_with_tensorboards_reader(uninterrupted: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = uninterrupted["ckpt"].parent / "logs" / "tensorboard" / "tiny"
    assert tb.is_dir(), "--tensorboard-dir from the argument list was not honoured"
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"lm loss", "learning-rate", "grad-norm", "iteration-time", "throughput", "batch-size"} <= tags
    logged = _losses(uninterrupted["results"][1].output)
    events = {e.step: e.value for e in acc.Scalars("lm loss")}
    assert sorted(events) == list(range(1, ITERS + 1))
    for it, loss in logged.items():
        assert events[it] == pytest.approx(loss, rel=1e-5)
    assert all(e.value > 0 for e in acc.Scalars("throughput"))
