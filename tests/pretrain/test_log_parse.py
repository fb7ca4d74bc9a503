"""One parser for Megatron-format iteration lines, from MindSpeed-LLM and the CPU trainer alike."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from q7x2_runtime.pretrain.log_parse import last_iteration, parse_line, parse_log
from q7x2_runtime.pretrain.megatron_log import IterationStats, format_iteration_line

REFERENCE_LINE = (
    " [2026-01-05 10:11:12] iteration       10/    2000 | consumed samples:          640 |"
    " elapsed time per iteration (ms): 1234.5 | throughput per GPU (TFLOP/s/GPU): 123.4 |"
    " learning rate: 1.250000E-06 | global batch size:    64 | lm loss: 1.234567E+00 |"
    " loss scale: 1.0 | grad norm: 0.123 | number of skipped iterations:   0 |"
    " number of nan iterations:   0 |"
)


def test_reference_line() -> None:
    r = parse_line(REFERENCE_LINE)
    assert r is not None
    assert (r.iteration, r.train_iters, r.consumed_samples) == (10, 2000, 640)
    assert r.timestamp == "2026-01-05 10:11:12"
    assert r.elapsed_ms == 1234.5 and r.throughput_tflops == 123.4
    assert r.learning_rate == 1.25e-6 and r.global_batch_size == 64
    assert r.lm_loss == 1.234567 and r.loss_scale == 1.0 and r.grad_norm == 0.123
    assert r.skipped_iterations == 0 and r.nan_iterations == 0
    assert r.progress == 10 / 2000


def test_optional_fields_prefixes_and_noise() -> None:
    text = "\n".join([
        "[default1]:some other output",
        "[default1]:" + REFERENCE_LINE.replace(" throughput per GPU (TFLOP/s/GPU): 123.4 |", "").replace(" grad norm: 0.123 |", ""),
        "2026-01-05T10:11:13.000Z  [2026-01-05 10:11:13] iteration       11/    2000 | consumed samples:          704 | lm loss: nan |",
        "saved checkpoint at iteration       11",
    ])
    records = parse_log(text)
    assert [r.iteration for r in records] == [10, 11]
    assert records[0].throughput_tflops is None and records[0].grad_norm is None
    assert math.isnan(records[1].lm_loss)
    assert last_iteration(text).consumed_samples == 704
    assert last_iteration("no training yet") is None


@settings(max_examples=50, deadline=None)
@given(
    it=st.integers(1, 10**6), total=st.integers(1, 10**6), consumed=st.integers(0, 10**9),
    ms=st.floats(0, 1e6), lr=st.floats(0, 1), gbs=st.integers(1, 10**5), loss=st.floats(0, 100),
    gn=st.one_of(st.none(), st.floats(0, 1e4)), tput=st.one_of(st.none(), st.floats(0, 1e4)),
)
def test_round_trip_with_trainer_format(it, total, consumed, ms, lr, gbs, loss, gn, tput) -> None:
    line = format_iteration_line(IterationStats(it, total, consumed, ms, lr, gbs, loss, gn, tput), now=0)
    r = parse_line(line)
    assert r is not None
    assert (r.iteration, r.train_iters, r.consumed_samples, r.global_batch_size) == (it, total, consumed, gbs)
    assert math.isclose(r.lm_loss, loss, rel_tol=1e-6, abs_tol=1e-12)
    assert math.isclose(r.learning_rate, lr, rel_tol=1e-6, abs_tol=1e-12)
    assert math.isclose(r.elapsed_ms, ms, abs_tol=0.051)
    assert (r.grad_norm is None) == (gn is None) and (r.throughput_tflops is None) == (tput is None)
