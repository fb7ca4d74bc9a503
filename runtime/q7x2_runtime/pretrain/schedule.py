"""Megatron's learning-rate schedule (OptimizerParamScheduler): linear warmup from 0, then decay.

Megatron counts in samples, but warmup and decay lengths are both iterations x global batch,
so working in iterations gives the same values. The value at step n is what the optimizer uses
for iteration n+1, as Megatron steps its scheduler after each update.
"""

from __future__ import annotations

import math


def learning_rate(step: int, *, max_lr: float, min_lr: float, train_iters: int, warmup_fraction: float, style: str) -> float:
    warmup = warmup_fraction * train_iters
    if warmup > 0 and step <= warmup:
        return max_lr * step / warmup
    if style == "constant":
        return max_lr
    if step > train_iters:
        return min_lr
    ratio = (step - warmup) / (train_iters - warmup) if train_iters > warmup else 1.0
    if style == "linear":
        coeff = 1.0 - ratio
    elif style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    else:
        raise ValueError(f"unknown lr decay style {style!r}")
    return min_lr + coeff * (max_lr - min_lr)
