"""Read Megatron-format training logs (MindSpeed-LLM's and the CPU trainer's alike).

A line looks like (one line, some fields optional):
 [2026-01-01 10:00:00] iteration       10/    2000 | consumed samples:          640 |
 elapsed time per iteration (ms): 1234.5 | throughput per GPU (TFLOP/s/GPU): 123.4 |
 learning rate: 1.250000E-06 | global batch size:    64 | lm loss: 1.234567E+00 |
 loss scale: 1.0 | grad norm: 0.123 | number of skipped iterations:   0 |
 number of nan iterations:   0 |
Launchers may prefix lines (torchrun's "[default3]:", docker's timestamps); that is tolerated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_ITER = re.compile(r"(?:\[(?P<stamp>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\])?\s*iteration\s+(?P<it>\d+)\s*/\s*(?P<total>\d+)\s*\|(?P<rest>.*)$")

# field label in the log -> attribute name
_FIELDS = {
    "consumed samples": "consumed_samples",
    "elapsed time per iteration (ms)": "elapsed_ms",
    "throughput per GPU (TFLOP/s/GPU)": "throughput_tflops",
    "tokens per second per GPU": "tokens_per_second",
    "learning rate": "learning_rate",
    "global batch size": "global_batch_size",
    "lm loss": "lm_loss",
    "loss scale": "loss_scale",
    "grad norm": "grad_norm",
    "number of skipped iterations": "skipped_iterations",
    "number of nan iterations": "nan_iterations",
}
_INT_FIELDS = {"consumed_samples", "global_batch_size", "skipped_iterations", "nan_iterations"}


@dataclass(frozen=True)
class IterationRecord:
    iteration: int
    train_iters: int
    timestamp: str | None = None
    consumed_samples: int | None = None
    elapsed_ms: float | None = None
    throughput_tflops: float | None = None
    tokens_per_second: float | None = None
    learning_rate: float | None = None
    global_batch_size: int | None = None
    lm_loss: float | None = None
    loss_scale: float | None = None
    grad_norm: float | None = None
    skipped_iterations: int | None = None
    nan_iterations: int | None = None

    @property
    def progress(self) -> float:
        return self.iteration / self.train_iters if self.train_iters else 0.0


def _number(text: str, integer: bool) -> float | int | None:
    text = text.strip()
    try:
        return int(text) if integer else float(text)
    except ValueError:
        try:  # "nan"/"inf" or an int printed as float
            return int(float(text)) if integer else float(text)
        except ValueError:
            return None


def parse_line(line: str) -> IterationRecord | None:
    """The iteration record on this line, or None if it is not a training iteration line."""
    m = _ITER.search(line)
    if m is None:
        return None
    values: dict[str, object] = {}
    for part in m.group("rest").split("|"):
        label, sep, value = part.partition(":")
        if not sep:
            continue
        attr = _FIELDS.get(label.strip())
        if attr is None:
            continue
        num = _number(value, attr in _INT_FIELDS)
        if num is not None:
            values[attr] = num
    return IterationRecord(iteration=int(m.group("it")), train_iters=int(m.group("total")), timestamp=m.group("stamp"), **values)  # type: ignore[arg-type]


def parse_log(lines: Iterable[str] | str) -> list[IterationRecord]:
    """Every iteration record, in log order (a resumed run repeats iterations; all are kept)."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    return [r for r in (parse_line(line) for line in lines) if r is not None]


def last_iteration(lines: Iterable[str] | str) -> IterationRecord | None:
    records = parse_log(lines)
    return records[-1] if records else None
