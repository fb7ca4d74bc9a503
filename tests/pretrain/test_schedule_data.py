"""Learning-rate schedule and GPT-style sample packing."""

from __future__ import annotations

import numpy as np
import pytest

from q7x2_runtime.errors import UserError
from q7x2_runtime.pretrain.data import PackedSamples, micro_batch_indices
from q7x2_runtime.pretrain.schedule import learning_rate


def _lr(step: int, style: str = "cosine") -> float:
    return learning_rate(step, max_lr=1e-3, min_lr=1e-4, train_iters=100, warmup_fraction=0.1, style=style)


def test_schedule_shapes() -> None:
    assert _lr(0) == 0.0
    assert _lr(5) == pytest.approx(5e-4)
    assert _lr(10) == pytest.approx(1e-3)
    assert _lr(55) == pytest.approx(1e-4 + 0.5 * 9e-4)  # cosine half-way
    assert _lr(100) == pytest.approx(1e-4) and _lr(150) == pytest.approx(1e-4)
    assert _lr(55, "linear") == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert _lr(32, "linear") == pytest.approx(1e-4 + (1 - 22 / 90) * 9e-4)
    assert _lr(80, "constant") == 1e-3
    assert all(_lr(s) >= _lr(s + 1) for s in range(10, 120))


def _docs(lengths: list[int]) -> list[np.ndarray]:
    out, start = [], 0
    for n in lengths:
        out.append(np.arange(start, start + n, dtype=np.int32))
        start += n
    return out


def test_packing_covers_the_stream_in_windows_that_overlap_by_one() -> None:
    docs = _docs([5, 0, 17, 3, 40, 9])
    total = sum(len(d) for d in docs)
    samples = PackedSamples(docs, seq_length=8, num_samples=30, seed=7)
    assert samples.epochs == 4  # (3*74-1)//8 = 27 < 30 <= (4*74-1)//8
    windows = [samples[i] for i in range(len(samples))]
    assert all(len(w) == 9 for w in windows)
    # Every token of the first epoch's stream appears, each document contiguous and whole.
    first_epoch = {int(x) for w in windows for x in w}
    assert first_epoch == set(range(total))
    again = PackedSamples(docs, seq_length=8, num_samples=30, seed=7)
    assert all(np.array_equal(again[i], windows[i]) for i in range(30))
    other = PackedSamples(docs, seq_length=8, num_samples=30, seed=8)
    assert not all(np.array_equal(other[i], windows[i]) for i in range(30))


def test_too_little_data_is_a_user_error() -> None:
    with pytest.raises(UserError, match="fewer than one sample"):
        PackedSamples(_docs([3, 4]), seq_length=8, num_samples=1, seed=1)


def test_micro_batches_partition_the_global_batch() -> None:
    mbs, dp, accum = 2, 3, 2
    gbs = mbs * dp * accum
    seen = sorted(i for m in range(accum) for r in range(dp) for i in micro_batch_indices(gbs * 5, m, r, mbs, dp))
    assert seen == list(range(gbs * 5, gbs * 6))
