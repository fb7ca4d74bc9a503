"""TensorBoard scalars of the cpu trainer, under the names Megatron core_r0.8.0 writes them.

Megatron's training_log writes, from the last rank, when --tensorboard-dir is given:
learning-rate, batch-size, lm loss, loss-scale, grad-norm, iteration-time and (with
--log-throughput) throughput, each against the iteration. Writing the same tags makes
`tensorboard --logdir` show both engines' runs side by side. The writer is torch's
SummaryWriter (tensorboard's own event format), never a hand-written one.
"""

from __future__ import annotations

from pathlib import Path

from q7x2_runtime.errors import UserError
from q7x2_runtime.pretrain.megatron_log import IterationStats


class ScalarLog:
    def __init__(self, directory: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard-dir needs the tensorboard package in the image (pip install tensorboard)") from None
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the TensorBoard directory {directory}: {e.strerror}") from None
        self._w = SummaryWriter(log_dir=directory, max_queue=100, flush_secs=10)

    def iteration(self, s: IterationStats) -> None:
        it = s.iteration
        self._w.add_scalar("learning-rate", s.learning_rate, it)
        self._w.add_scalar("batch-size", s.global_batch_size, it)
        self._w.add_scalar("lm loss", s.lm_loss, it)
        self._w.add_scalar("loss-scale", s.loss_scale, it)
        if s.grad_norm is not None:
            self._w.add_scalar("grad-norm", s.grad_norm, it)
        self._w.add_scalar("iteration-time", s.elapsed_ms / 1000.0, it)
        if s.throughput_tflops is not None:
            self._w.add_scalar("throughput", s.throughput_tflops, it)
        if s.tokens_per_second is not None:
            self._w.add_scalar("tokens-per-second", s.tokens_per_second, it)

    def close(self) -> None:
        self._w.flush()
        self._w.close()
