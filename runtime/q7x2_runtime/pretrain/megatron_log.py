"""Megatron's per-iteration training log line, produced by the CPU trainer.

The format follows megatron/training/training.py (training_log) so one parser reads both
engines' logs. Field order and number formats matter: keep them as Megatron prints them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class IterationStats:
    iteration: int
    train_iters: int
    consumed_samples: int
    elapsed_ms: float
    learning_rate: float
    global_batch_size: int
    lm_loss: float
    grad_norm: float | None
    throughput_tflops: float | None = None
    tokens_per_second: float | None = None  # per device; ours only (Megatron prints TFLOP/s alone)
    loss_scale: float = 1.0
    skipped_iterations: int = 0
    nan_iterations: int = 0


def format_iteration_line(s: IterationStats, now: float | None = None) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now if now is not None else time.time()))
    out = f" [{stamp}]"
    out += " iteration {:8d}/{:8d} |".format(s.iteration, s.train_iters)
    out += " consumed samples: {:12d} |".format(s.consumed_samples)
    out += " elapsed time per iteration (ms): {:.1f} |".format(s.elapsed_ms)
    if s.throughput_tflops is not None:
        out += f" throughput per GPU (TFLOP/s/GPU): {_throughput(s.throughput_tflops)} |"
    if s.tokens_per_second is not None:
        out += f" tokens per second per GPU: {s.tokens_per_second:.1f} |"
    out += " learning rate: {:.6E} |".format(s.learning_rate)
    out += " global batch size: {:5d} |".format(s.global_batch_size)
    out += " lm loss: {:.6E} |".format(s.lm_loss)
    out += " loss scale: {:.1f} |".format(s.loss_scale)
    if s.grad_norm is not None:
        out += " grad norm: {:.3f} |".format(s.grad_norm)
    out += " number of skipped iterations: {:3d} |".format(s.skipped_iterations)
    out += " number of nan iterations: {:3d} |".format(s.nan_iterations)
    return out


def _throughput(tflops: float) -> str:
    # Megatron's one decimal, except below 10, where a small model would print a meaningless 0.0.
    return f"{tflops:.1f}" if tflops >= 10 else f"{tflops:.3g}"


def gpt_flops_per_iteration(
    *, batch_size: int, seq_length: int, num_layers: int, hidden_size: int, ffn_hidden_size: int,
    num_attention_heads: int, num_query_groups: int, vocab_size: int, swiglu: bool = True,
    kv_channels: int | None = None,
) -> float:
    """Megatron core_r0.8.0's num_floating_point_operations (dense GPT, forward + backward);
    vocab_size is the padded vocabulary, kv_channels the head dim (default hidden / heads)."""
    gated = 1.5 if swiglu else 1.0
    kv = kv_channels if kv_channels is not None else hidden_size // num_attention_heads
    query_ratio = kv * num_attention_heads / hidden_size
    return (
        12.0 * batch_size * seq_length * num_layers * hidden_size * hidden_size
        * (
            (1 + num_query_groups / num_attention_heads + seq_length / hidden_size) * query_ratio
            + (ffn_hidden_size / hidden_size) * gated
            + vocab_size / (2 * num_layers * hidden_size)
        )
    )  # fmt: skip
