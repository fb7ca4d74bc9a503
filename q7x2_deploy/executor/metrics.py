"""Training progress from Megatron's iteration log line, read with the runtime's own parser so
the deployer and the trainer can never disagree about the format."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from q7x2_runtime.pretrain.log_parse import parse_line as _parse_record


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
    r = _parse_record(line)
    if r is None:
        return None
    return Progress(r.iteration, r.train_iters, r.lm_loss, r.throughput_tflops, r.elapsed_ms, r.learning_rate)


def last_progress(lines: list[str]) -> Progress | None:
    for line in reversed(lines):
        if (p := parse_line(line)) is not None:
            return p
    return None


def losses(lines: list[str]) -> list[tuple[int, float]]:
    """(iteration, loss) for every iteration line that has a loss, in log order."""
    return [(p.iteration, p.lm_loss) for p in map(parse_line, lines) if p is not None and p.lm_loss is not None]
