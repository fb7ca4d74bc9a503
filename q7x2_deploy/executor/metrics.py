"""Training progress from Megatron's log line (iteration, loss, throughput, step time)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

_ITER = re.compile(r"iteration\s+(\d+)\s*/\s*(\d+)")
_FIELDS = {
    "lm_loss": re.compile(r"lm loss:\s*([-+0-9.eE]+|nan|inf)", re.I),
    "tflops_per_device": re.compile(r"throughput per (?:GPU|NPU|device)[^:]*:\s*([-+0-9.eE]+)"),
    "ms_per_iteration": re.compile(r"elapsed time per iteration \(ms\):\s*([-+0-9.eE]+)"),
    "learning_rate": re.compile(r"learning rate:\s*([-+0-9.eE]+)"),
}


@dataclass(frozen=True)
class Progress:
    iteration: int
    train_iters: int
    lm_loss: float | None = None
    tflops_per_device: float | None = None
    ms_per_iteration: float | None = None
    learning_rate: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_line(line: str) -> Progress | None:
    m = _ITER.search(line)
    if m is None or "|" not in line:
        return None
    values: dict[str, float | None] = {}
    for key, rx in _FIELDS.items():
        f = rx.search(line)
        try:
            values[key] = float(f.group(1)) if f else None
        except ValueError:
            values[key] = None
    return Progress(int(m.group(1)), int(m.group(2)), **values)


def last_progress(lines: list[str]) -> Progress | None:
    for line in reversed(lines):
        if (p := parse_line(line)) is not None:
            return p
    return None


def losses(lines: list[str]) -> list[tuple[int, float]]:
    out = []
    for line in lines:
        p = parse_line(line)
        if p is not None and p.lm_loss is not None:
            out.append((p.iteration, p.lm_loss))
    return out
