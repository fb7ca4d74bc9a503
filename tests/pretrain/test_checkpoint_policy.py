"""Who writes checkpoints, and when a trainer-state side file is trusted."""

from __future__ import annotations

from pathlib import Path

import torch

from q7x2_runtime.jobspec import Job
from q7x2_runtime.pretrain.checkpoint import TRAINER_STATE, TRAINER_STATE_FORMAT, find_start, is_writer, load_trainer_state


def test_writers_by_storage() -> None:
    shared, per_node = Job(storage="shared"), Job(storage="per-node")
    # ranks (global, local) of a 2-node x 2-process world
    ranks = [(0, 0), (1, 1), (2, 0), (3, 1)]
    assert [is_writer(shared, g, l) for g, l in ranks] == [True, False, False, False]
    assert [is_writer(per_node, g, l) for g, l in ranks] == [True, False, True, False]


def test_start_point(tmp_path: Path) -> None:
    job = Job(paths={"save_dir": str(tmp_path / "ckpt"), "mcore_weights": str(tmp_path / "mcore")})
    start = find_start(job)
    assert (start.load_dir, start.iteration, start.resume) == (tmp_path / "mcore", None, False)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("20")
    start = find_start(job)
    assert (start.load_dir, start.iteration, start.resume) == (tmp_path / "ckpt", 20, True)


def test_trainer_state_must_match_iteration(tmp_path: Path) -> None:
    d = tmp_path / "iter_0000020"
    d.mkdir()
    assert load_trainer_state(tmp_path, 20) is None
    torch.save({"format": TRAINER_STATE_FORMAT, "iteration": 10, "optimizer": {}}, d / TRAINER_STATE)
    assert load_trainer_state(tmp_path, 20) is None
    torch.save({"format": TRAINER_STATE_FORMAT, "iteration": 20, "optimizer": {}}, d / TRAINER_STATE)
    assert load_trainer_state(tmp_path, 20)["iteration"] == 20
