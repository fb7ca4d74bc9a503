"""The CPU training process: one data-parallel rank of Qwen2.5 pretraining over gloo.

torchrun starts one of these per process slot on every node (`python -m
q7x2_runtime.pretrain.trainer --job JOB`). Each is a data-parallel rank: tp/pp are not used for
compute here, only for the layout of the checkpoints it reads and writes, so its checkpoints stay
interchangeable with MindSpeed-LLM's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.model_dims import ModelDims
from q7x2_runtime.pretrain.checkpoint import TRAINER_STATE_FORMAT, convert_api, find_start, is_writer, load_trainer_state, save_checkpoint
from q7x2_runtime.pretrain.data import PackedSamples, micro_batch_indices
from q7x2_runtime.pretrain.megatron_log import IterationStats, format_iteration_line, gpt_flops_per_iteration
from q7x2_runtime.pretrain.schedule import learning_rate


def build_model(dims: ModelDims, seq_length: int) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=dims.vocab_size,
        hidden_size=dims.hidden_size,
        intermediate_size=dims.ffn_hidden_size,
        num_hidden_layers=dims.num_layers,
        num_attention_heads=dims.num_attention_heads,
        num_key_value_heads=dims.num_query_groups,
        max_position_embeddings=max(dims.max_position_embeddings, seq_length),
        rope_theta=dims.rotary_base,
        rms_norm_eps=dims.norm_epsilon,
        tie_word_embeddings=not dims.untie_embeddings,
        attention_dropout=0.0,
        use_cache=False,
    )
    return Qwen2ForCausalLM(config).float()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # As Megatron: no weight decay on biases and norm weights (the 1-D parameters).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


_STRUCTURAL = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "vocab_size", "untie_embeddings")


def _check_dims(found: ModelDims, expected: ModelDims, where: Path) -> None:
    """The checkpoint must be the job's model: MindSpeed-LLM would refuse it otherwise, so must we."""
    diffs = [f"{k} {getattr(found, k)} (job: {getattr(expected, k)})" for k in _STRUCTURAL if getattr(found, k) != getattr(expected, k)]
    if diffs:
        raise UserError(f"checkpoint {where} is not the job's model: {', '.join(diffs)}; convert the job's HF weights again")


class Trainer:
    def __init__(self, spec: JobSpec, exit_interval: int | None) -> None:
        self.spec = spec
        self.job = spec.job
        self.t = spec.job.training
        self.exit_interval = exit_interval
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        t = self.t
        chunk = t.micro_batch_size * self.world
        if t.global_batch_size % chunk:
            raise UserError(
                f"global_batch_size {t.global_batch_size} is not a multiple of micro_batch_size x data-parallel size "
                f"= {t.micro_batch_size} x {self.world}"
            )
        self.accum = t.global_batch_size // chunk

    def log(self, msg: str) -> None:
        # Megatron prints from the last rank; so do we, so one log parser serves both engines.
        if self.rank == self.world - 1:
            print(msg, flush=True)

    def setup(self) -> None:
        from q7x2_runtime.indexed_dataset import IndexedDataset

        torch.manual_seed(self.t.seed)
        start = find_start(self.job)
        self._agree_on_start(start.iteration if start.resume else 0)
        dims, hf_state = convert_api()[0](start.load_dir, start.iteration)
        _check_dims(dims, self.job.model.d, start.load_dir)
        self.dims = dims
        model = build_model(dims, self.t.seq_length)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in hf_state.items()}, strict=False)
        if missing or unexpected:
            raise UserError(
                f"checkpoint {start.load_dir} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        self.model = model
        self.ddp = torch.nn.parallel.DistributedDataParallel(model)
        self.opt = torch.optim.AdamW(
            _param_groups(model, self.t.weight_decay), lr=0.0, betas=(self.t.adam_beta1, self.t.adam_beta2), eps=1e-8
        )
        self.iteration = 0
        if start.resume:
            assert start.iteration is not None
            self.iteration = start.iteration
            state = load_trainer_state(start.load_dir, start.iteration)
            if state is None:
                self.log(f"resuming from {start.load_dir} iteration {start.iteration} without trainer state: "
                         "optimizer moments start from zero")  # fmt: skip
            else:
                model.load_state_dict(state["model_fp32"])
                self.opt.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["torch_rng"])
            self.log(f"resumed from checkpoint {start.load_dir} at iteration {self.iteration}")
        else:
            self.log(f"loaded converted weights from {start.load_dir}, starting at iteration 0")
        docs = IndexedDataset(self.job.paths.data_path)
        self.samples = PackedSamples(docs, self.t.seq_length, self.t.train_iters * self.t.global_batch_size, self.t.seed)
        self.log(
            f"data: {len(docs)} documents from {self.job.paths.data_path}, {len(self.samples)} samples of "
            f"{self.t.seq_length}+1 tokens over {self.samples.epochs} epoch(s); data-parallel size {self.world}, "
            f"micro batch {self.t.micro_batch_size}, gradient accumulation {self.accum}"
        )

    def _agree_on_start(self, iteration: int) -> None:
        """Every rank must resume from the same iteration; with per-node storage a node whose
        save_dir lags (or was wiped) would otherwise train from different weights and data."""
        both = torch.tensor([iteration, -iteration], dtype=torch.int64)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        lo, hi = -int(both[1]), int(both[0])
        if lo != hi:
            raise UserError(
                f"nodes disagree on the checkpoint to resume from (iterations {lo} to {hi} in "
                f"{self.job.paths.save_dir}); with storage per-node, make every node's save_dir hold the same checkpoints"
            )

    def _micro_batch(self, consumed: int, micro_step: int) -> torch.Tensor:
        idx = micro_batch_indices(consumed, micro_step, self.rank, self.t.micro_batch_size, self.world)
        return torch.from_numpy(np.stack([self.samples[i] for i in idx]))

    def train_step(self) -> tuple[float, float]:
        t = self.t
        consumed = self.iteration * t.global_batch_size
        lr = learning_rate(self.iteration, max_lr=t.lr, min_lr=t.min_lr, train_iters=t.train_iters,
                           warmup_fraction=t.lr_warmup_fraction, style=t.lr_decay_style)  # fmt: skip
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros(())
        vocab = self.dims.vocab_size
        for m in range(self.accum):
            batch = self._micro_batch(consumed, m)
            inputs, labels = batch[:, :-1], batch[:, 1:]
            # Gradients are all-reduced once per iteration, on the last micro batch.
            sync = contextlib.nullcontext() if m == self.accum - 1 else self.ddp.no_sync()
            with sync:
                logits = self.ddp(input_ids=inputs).logits
                loss = F.cross_entropy(logits.float().reshape(-1, vocab), labels.reshape(-1))
                (loss / self.accum).backward()
            loss_sum += loss.detach()
        max_norm = t.clip_grad if t.clip_grad > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        self.opt.step()
        loss_avg = loss_sum / self.accum
        dist.all_reduce(loss_avg)
        loss_value = float(loss_avg) / self.world
        if not np.isfinite(loss_value):
            raise RuntimeError(f"loss is {loss_value} at iteration {self.iteration + 1}")
        self.iteration += 1
        return loss_value, grad_norm

    def trainer_state(self) -> dict:
        return {
            "format": TRAINER_STATE_FORMAT,
            "iteration": self.iteration,
            "consumed_samples": self.iteration * self.t.global_batch_size,
            "model_fp32": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self) -> None:
        if is_writer(self.job, self.rank, self.local_rank):
            started = time.time()
            path = save_checkpoint(self.job, self.dims, self.model, self.trainer_state(), self.iteration)
            print(f"saved checkpoint at iteration {self.iteration:8d} to {path} ({time.time() - started:.1f} s)", flush=True)
        dist.barrier()

    def run(self) -> None:
        t = self.t
        d = self.dims
        flops = gpt_flops_per_iteration(
            batch_size=t.global_batch_size, seq_length=t.seq_length, num_layers=d.num_layers, hidden_size=d.hidden_size,
            ffn_hidden_size=d.ffn_hidden_size, num_attention_heads=d.num_attention_heads,
            num_query_groups=d.num_query_groups, vocab_size=d.vocab_size,
        )  # fmt: skip
        interval_start = time.time()
        interval_iters = 0
        saved_at = self.iteration  # nothing new to save unless an iteration runs
        while self.iteration < t.train_iters:
            loss, grad_norm = self.train_step()
            interval_iters += 1
            if self.iteration % t.log_interval == 0:
                elapsed = (time.time() - interval_start) / interval_iters
                lr_next = learning_rate(self.iteration, max_lr=t.lr, min_lr=t.min_lr, train_iters=t.train_iters,
                                        warmup_fraction=t.lr_warmup_fraction, style=t.lr_decay_style)  # fmt: skip
                stats = IterationStats(
                    iteration=self.iteration, train_iters=t.train_iters,
                    consumed_samples=self.iteration * t.global_batch_size, elapsed_ms=elapsed * 1000.0,
                    throughput_tflops=flops / elapsed / self.world / 1e12, learning_rate=lr_next,
                    global_batch_size=t.global_batch_size, lm_loss=loss, grad_norm=grad_norm,
                )  # fmt: skip
                self.log(format_iteration_line(stats))
                interval_start, interval_iters = time.time(), 0
            exiting = self.exit_interval is not None and self.iteration % self.exit_interval == 0
            if self.iteration % t.save_interval == 0 or self.iteration == t.train_iters or exiting:
                self.save()
                saved_at = self.iteration
                interval_start = time.time()  # saving is not training time
            if exiting and self.iteration < t.train_iters:
                self.log(f"exiting after iteration {self.iteration} (--exit-interval {self.exit_interval})")
                return
        if saved_at != self.iteration:
            self.save()
        self.log(f"training finished at iteration {self.iteration}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="q7x2_runtime.pretrain.trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--exit-interval", type=int, default=None)
    args = parser.parse_args(argv)
    spec = JobSpec.load(args.job)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # Collectives wait at least this long: long enough for a peer's checkpoint save, short
    # enough that a vanished peer ends the job instead of hanging it.
    timeout = datetime.timedelta(seconds=max(spec.cluster.connect_timeout_s, 600))
    dist.init_process_group("gloo", timeout=timeout)
    try:
        trainer = Trainer(spec, args.exit_interval)
        trainer.setup()
        trainer.run()
    except UserError as e:
        print(f"q7x2-runtime pretrain (rank {dist.get_rank()}): error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
