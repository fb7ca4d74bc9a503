"""Where training starts from: the one rule both engines follow, decided from the files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import Job
from q7x2_runtime.pretrain.start import NodeSurvey, decide, point_tracker_at, survey


def _job(tmp_path: Path, **parallelism) -> Job:
    return Job(
        model={"dims": {"num_layers": 4, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
                        "num_query_groups": 2, "vocab_size": 256, "max_position_embeddings": 128,
                        "rotary_base": 10000.0, "norm_epsilon": 1e-6}},
        parallelism={"tp": 2, "pp": 1, "npus_per_node": 1, **parallelism},
        paths={"save_dir": str(tmp_path / "ckpt"), "mcore_weights": str(tmp_path / "mcore")},
    )  # fmt: skip


def _write_iteration(save_dir: Path, n: int, rank_dirs: list[str], *, ffn: int = 128, optim: bool = True) -> None:
    args = argparse.Namespace(num_layers=4, hidden_size=64, ffn_hidden_size=ffn, num_attention_heads=4,
                              group_query_attention=True, num_query_groups=2, untie_embeddings_and_output_weights=True)
    for name in rank_dirs:
        d = save_dir / f"iter_{n:07d}" / name
        d.mkdir(parents=True)
        torch.save({"args": args, "iteration": n, "model": {}}, d / "model_optim_rng.pt")
        if optim:
            torch.save({"state": {}}, d / "distrib_optim.pt")


def _tracker(save_dir: Path, n: int) -> None:
    (save_dir / "latest_checkpointed_iteration.txt").write_text(str(n))


TP2 = ["mp_rank_00", "mp_rank_01"]


def test_no_checkpoint_is_a_first_start_from_the_converted_weights(tmp_path: Path) -> None:
    job = _job(tmp_path)
    start = decide(job, [survey(job, 0), survey(job, 1)])
    assert (start.kind, start.iteration, start.load_dir) == ("first", 0, str(tmp_path / "mcore"))


def test_complete_checkpoint_is_resumed(tmp_path: Path) -> None:
    job = _job(tmp_path)
    ckpt = tmp_path / "ckpt"
    _write_iteration(ckpt, 10, TP2)
    _write_iteration(ckpt, 20, TP2)
    _tracker(ckpt, 20)
    start = decide(job, [survey(job, 0)])
    assert (start.kind, start.iteration, start.load_dir) == ("resume", 20, str(ckpt))


def test_half_written_iteration_is_never_resumed(tmp_path: Path) -> None:
    job = _job(tmp_path)
    ckpt = tmp_path / "ckpt"
    _write_iteration(ckpt, 10, TP2)
    _tracker(ckpt, 10)
    _write_iteration(ckpt, 20, TP2)
    (ckpt / "iter_0000020" / "mp_rank_01" / "distrib_optim.pt").write_bytes(b"PK\x03\x04 cut short")
    start = decide(job, [survey(job, 0)])
    assert (start.kind, start.iteration) == ("resume", 10)
    assert any("iteration 20 is incomplete" in n for n in start.notes)
    # Its files all whole but the tracker not yet moved: still not resumed.
    (ckpt / "iter_0000020" / "mp_rank_01" / "distrib_optim.pt").unlink()
    torch.save({"state": {}}, ckpt / "iter_0000020" / "mp_rank_01" / "distrib_optim.pt")
    assert decide(job, [survey(job, 0)]).iteration == 10


def test_only_a_half_written_first_save_is_a_first_start(tmp_path: Path) -> None:
    job = _job(tmp_path)
    _write_iteration(tmp_path / "ckpt", 10, TP2[:1])
    start = decide(job, [survey(job, 0)])
    assert start.kind == "first"


def test_missing_optimizer_files_make_an_iteration_incomplete_unless_the_job_keeps_none(tmp_path: Path) -> None:
    job = _job(tmp_path)
    ckpt = tmp_path / "ckpt"
    _write_iteration(ckpt, 10, TP2, optim=False)
    _tracker(ckpt, 10)
    assert decide(job, [survey(job, 0)]).kind == "first"
    job.checkpoint.keep_optimizer = False
    assert decide(job, [survey(job, 0)]).iteration == 10


def test_another_layout_is_refused(tmp_path: Path) -> None:
    job = _job(tmp_path)
    ckpt = tmp_path / "ckpt"
    _write_iteration(ckpt, 10, ["mp_rank_00_000", "mp_rank_00_001"])
    _tracker(ckpt, 10)
    with pytest.raises(UserError, match=r"node 0: .* holds iteration 10 written with another tensor/pipeline layout "
                                         r"\(mp_rank_00_000, mp_rank_00_001\) than the job's tp 2 pp 1"):
        decide(job, [survey(job, 0)])


def test_another_model_shape_is_refused(tmp_path: Path) -> None:
    job = _job(tmp_path)
    ckpt = tmp_path / "ckpt"
    _write_iteration(ckpt, 10, TP2, ffn=256)
    _tracker(ckpt, 10)
    with pytest.raises(UserError, match=r"holds iteration 10 of another model \(ffn_hidden_size 256 \(job: 128\)\)"):
        decide(job, [survey(job, 0)])


def test_nodes_take_the_newest_iteration_complete_on_every_node(tmp_path: Path) -> None:
    job = _job(tmp_path)
    a = [NodeSurvey(0, [10, 20, 30], 30), NodeSurvey(1, [10, 20], None)]
    start = decide(job, a)
    assert (start.kind, start.iteration) == ("resume", 20)
    assert any("node 0 also holds iteration 30" in n for n in start.notes)


def test_a_node_without_the_checkpoint_ends_the_launch(tmp_path: Path) -> None:
    job = _job(tmp_path)
    with pytest.raises(UserError, match=r"no common complete checkpoint .*node 0: 10, 20; node 1: none"):
        decide(job, [NodeSurvey(0, [10, 20], 20), NodeSurvey(1, [], None)])


def test_the_tracker_is_pointed_at_the_decision(tmp_path: Path) -> None:
    job = _job(tmp_path)
    ckpt = tmp_path / "ckpt"
    _write_iteration(ckpt, 10, TP2)
    _write_iteration(ckpt, 20, TP2)
    _tracker(ckpt, 20)
    start = decide(job, [survey(job, 0), NodeSurvey(1, [10], None)])
    assert start.iteration == 10
    assert point_tracker_at(job, start) is True
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "10"
    assert point_tracker_at(job, start) is False
