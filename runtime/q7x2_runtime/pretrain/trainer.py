"""The CPU reference trainer: Qwen2.5 pretraining over gloo, driven by MindSpeed-LLM's command line.

torchrun starts one of these per process slot on every node with exactly the arguments steps.py
builds for pretrain_gpt.py (`torchrun ... -m q7x2_runtime.pretrain.trainer <reference args>`,
see pretrain/megatron_args.py). It honours Megatron core_r0.8.0's meaning of them: the start
iteration comes from the tracker of --load (--finetune or a release checkpoint: iteration 0),
optimizer and RNG state are read only when Megatron would read them, checkpoints are written in
Megatron's layout by the ranks Megatron would write them from (pretrain/checkpoint.py).

Every process computes as a data-parallel replica of the whole model: tp/pp decide the
checkpoint layout, who writes which file and Megatron's divisibility checks, not the compute.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from q7x2_runtime.errors import UserError
from q7x2_runtime.model_dims import ModelDims
from q7x2_runtime.pretrain.checkpoint import RankGrid, SaveRequest, read_optimizer, read_rank_file, restore_rng, rng_state, save_iteration
from q7x2_runtime.pretrain.data import PackedSamples, micro_batch_indices
from q7x2_runtime.pretrain.megatron_args import TrainerArgs, parse, train_documents
from q7x2_runtime.pretrain.megatron_log import IterationStats, format_iteration_line, gpt_flops_per_iteration
from q7x2_runtime.pretrain.schedule import learning_rate

CONNECT_TIMEOUT_ENV = "Q7X2_CONNECT_TIMEOUT_S"


def build_model(dims: ModelDims, seq_length: int, *, init_method_std: float = 0.02, attention_dropout: float = 0.0) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=dims.vocab_size,
        hidden_size=dims.hidden_size,
        intermediate_size=dims.ffn_hidden_size,
        num_hidden_layers=dims.num_layers,
        num_attention_heads=dims.num_attention_heads,
        num_key_value_heads=dims.num_query_groups,
        max_position_embeddings=max(dims.max_position_embeddings, seq_length),
        # transformers 4.x names it rope_theta; 5.x folds rope_theta given here into rope_parameters.
        rope_theta=dims.rotary_base,  # type: ignore[call-arg]
        rms_norm_eps=dims.norm_epsilon,
        tie_word_embeddings=not dims.untie_embeddings,
        attention_dropout=attention_dropout,
        initializer_range=init_method_std,
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
    """The checkpoint must be the argument list's model: Megatron's strict load refuses it otherwise."""
    diffs = [f"{k} {getattr(found, k)} (job: {getattr(expected, k)})" for k in _STRUCTURAL if getattr(found, k) != getattr(expected, k)]
    if diffs:
        raise UserError(f"checkpoint {where} is not the job's model: {', '.join(diffs)}; convert the job's HF weights again")


def dims_from_args(a: TrainerArgs) -> ModelDims:
    return ModelDims(
        num_layers=a.num_layers, hidden_size=a.hidden_size, ffn_hidden_size=a.ffn_hidden_size,
        num_attention_heads=a.num_attention_heads,
        num_query_groups=a.num_query_groups if a.group_query_attention else a.num_attention_heads,
        vocab_size=a.padded_vocab_size, max_position_embeddings=a.max_position_embeddings,
        rotary_base=float(a.rotary_base), norm_epsilon=a.norm_epsilon,
        untie_embeddings=a.untie_embeddings_and_output_weights, qkv_bias=a.add_qkv_bias,
    )  # fmt: skip


def scheduler_state(a: TrainerArgs, consumed_samples: int) -> dict:
    """Megatron's OptimizerParamScheduler state (in samples), as saved in model_optim_rng.pt."""
    decay_steps = a.train_iters * a.global_batch_size
    return {
        "max_lr": a.lr, "min_lr": a.min_lr, "lr_warmup_steps": (a.lr_warmup_fraction or 0.0) * decay_steps,
        "num_steps": consumed_samples, "lr_decay_style": a.lr_decay_style, "lr_decay_steps": decay_steps,
        "start_wd": a.weight_decay, "end_wd": a.weight_decay, "wd_incr_steps": decay_steps, "wd_incr_style": "constant",
    }  # fmt: skip


def check_scheduler(saved: dict | None, a: TrainerArgs, where: Path) -> None:
    """As Megatron's scheduler load: the schedule given must be the checkpoint's."""
    if not saved:
        return
    mine = scheduler_state(a, 0)
    for key in ("max_lr", "min_lr", "lr_warmup_steps", "lr_decay_steps", "lr_decay_style"):
        if key in saved and saved[key] != mine[key]:
            raise UserError(
                f"{where}: learning-rate schedule {key} is {saved[key]} in the checkpoint but {mine[key]} in the arguments; "
                "a resume keeps the checkpoint's schedule (start with --finetune to change it)"
            )


class _DocumentRange:
    """The training split's documents (Megatron's --split), as the sample builder reads them."""

    def __init__(self, docs, docs_range: range) -> None:
        self.docs, self.range = docs, docs_range
        lengths = getattr(docs, "sequence_lengths", None)
        self.sequence_lengths = None if lengths is None else np.asarray(lengths)[docs_range.start : docs_range.stop]

    def __len__(self) -> int:
        return len(self.range)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.docs[self.range[i]]


class Trainer:
    def __init__(self, args: TrainerArgs) -> None:
        self.a = args
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        a = args
        tp, pp = a.tensor_model_parallel_size, a.pipeline_model_parallel_size
        if self.world % (tp * pp):
            raise UserError(f"world size {self.world} is not divisible by tensor parallel size {tp} x pipeline parallel size {pp}")
        self.grid = RankGrid(tp, pp, self.world)
        if a.global_batch_size % (a.micro_batch_size * self.grid.dp):
            raise UserError(
                f"global batch size {a.global_batch_size} is not divisible by micro batch size {a.micro_batch_size} "
                f"x data-parallel size {self.grid.dp}"
            )
        chunk = a.micro_batch_size * self.world
        if a.global_batch_size % chunk:
            raise UserError(
                f"global batch size {a.global_batch_size} is not a multiple of micro batch size x processes "
                f"= {a.micro_batch_size} x {self.world} (the cpu trainer runs every process as a data-parallel replica)"
            )
        self.accum = a.global_batch_size // chunk
        self.dims = dims_from_args(a)
        from q7x2_runtime.convert.layout import plan_parallel

        self.par = plan_parallel(self.dims, tp, pp, a.layer_list)
        self.tp_rank, _, self.pp_rank = self.grid.coords(self.rank)
        # As Megatron: the last rank writes the TensorBoard scalars.
        self.scalars = None
        if a.tensorboard_dir and self.rank == self.world - 1:
            from q7x2_runtime.pretrain.tensorboard_log import ScalarLog

            self.scalars = ScalarLog(a.tensorboard_dir)

    def log(self, msg: str) -> None:
        # Megatron prints from the last rank; so do we, so one log parser serves both engines.
        if self.rank == self.world - 1:
            print(msg, flush=True)

    # -- start: Megatron's load_checkpoint ---------------------------------------------------
    def _set_seed(self) -> None:
        seed = self.a.seed + 100 * self.pp_rank  # as Megatron's _set_random_seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _random_model(self) -> torch.nn.Module:
        return build_model(self.dims, self.a.seq_length, init_method_std=self.a.init_method_std, attention_dropout=self.a.attention_dropout)

    def load(self) -> None:
        from q7x2_runtime.convert.api import load_mcore_as_hf_state_dict
        from q7x2_runtime.convert.layout import TRACKER, iteration_dir_name, scan_ranks

        a = self.a
        self.iteration = 0
        self.consumed = 0
        self.flops_so_far = 0.0
        self.opt: torch.optim.Optimizer | None = None
        self.model: torch.nn.Module | None = None
        if a.load is None:
            self.log("no --load: training starts from randomly initialised weights")
            self._build(self._random_model())
            return
        load_dir = Path(a.load)
        tracker = load_dir / TRACKER
        if not tracker.is_file():
            self.log(f"WARNING: could not find the metadata file {tracker}; will not load any checkpoints and will start from random")
            self._build(self._random_model())
            return
        text = tracker.read_text(encoding="utf-8").strip()
        release = text == "release"
        try:
            ckpt_iter: int | str = "release" if release else int(text)
        except ValueError:
            raise UserError(f"{tracker}: expected an iteration number or 'release', found {text[:40]!r}") from None
        iter_dir = load_dir / iteration_dir_name(ckpt_iter)
        tp, pp = scan_ranks(iter_dir)
        if (tp, pp) != (self.grid.tp, self.grid.pp):
            raise UserError(
                f"checkpoint {iter_dir} was written with tp {tp} pp {pp} but training runs with tp {self.grid.tp} "
                f"pp {self.grid.pp}; convert the weights at the training layout"
            )
        dims, hf_state = load_mcore_as_hf_state_dict(load_dir, 0 if release else int(ckpt_iter))
        _check_dims(dims, self.dims, load_dir)
        model = self._random_model()
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in hf_state.items()}, strict=False)
        if missing or unexpected:
            raise UserError(f"checkpoint {load_dir} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        mine = read_rank_file(load_dir, 0 if release else int(ckpt_iter), self.tp_rank, self.pp_rank, pp) if not release else {}
        fresh = release or a.finetune
        if not fresh:
            self.iteration = int(mine.get("iteration", ckpt_iter))
            saved_args = mine.get("args")
            self.consumed = int(getattr(saved_args, "consumed_train_samples", self.iteration * a.global_batch_size))
            self.flops_so_far = float(mine.get("num_floating_point_operations_so_far", 0.0) or 0.0)
        load_optim = not fresh and not a.no_load_optim
        optimizer_state = None
        if load_optim:
            check_scheduler(mine.get("opt_param_scheduler"), a, iter_dir)
            optimizer_state = read_optimizer(load_dir, self.iteration, self.par, a.use_distributed_optimizer)
        self._build(model, optimizer_state)
        if not fresh and not a.no_load_rng:
            entries = mine.get("rng_state")
            if not entries:
                raise UserError(f"{iter_dir}: the checkpoint holds no RNG state (saved with --no-save-rng); give --no-load-rng or --finetune")
            restore_rng(entries[0])
        what = ("optimizer and RNG state" if load_optim and not a.no_load_rng else
                "optimizer state, not RNG" if load_optim else
                "RNG state, not the optimizer" if not fresh and not a.no_load_rng else "no optimizer or RNG state")  # fmt: skip
        self.log(
            f"  successfully loaded checkpoint from {load_dir} [ t {self.tp_rank}, p {self.pp_rank} ] at iteration {self.iteration} "
            f"({what}{', --finetune' if a.finetune else ''})"
        )

    def _build(self, model: torch.nn.Module, optimizer_state: dict | None = None) -> None:
        a = self.a
        if optimizer_state is not None:
            names = [n for n, _ in model.named_parameters()]
            lacking = [n for n in names if n not in optimizer_state]
            if lacking:
                raise UserError(f"the checkpoint's optimizer state lacks {lacking[0]} ({len(lacking)} parameters); give --no-load-optim")
            with torch.no_grad():
                for n, param in model.named_parameters():
                    param.copy_(optimizer_state[n]["main_param"])  # fp32 main weights: an exact resume
        self.model = model
        self.ddp = torch.nn.parallel.DistributedDataParallel(model)
        self.opt = torch.optim.AdamW(_param_groups(model, a.weight_decay), lr=0.0, betas=(a.adam_beta1, a.adam_beta2), eps=1e-8)
        if optimizer_state is not None:
            for n, param in model.named_parameters():
                self.opt.state[param] = {k: v.clone() for k, v in optimizer_state[n].items() if k != "main_param"}

    def setup(self) -> None:
        from q7x2_runtime.indexed_dataset import IndexedDataset

        a = self.a
        if a.no_effect:
            self.log(f"no effect on cpu: {' '.join(a.no_effect)}")
        self._set_seed()
        self.load()
        docs = IndexedDataset(a.data_path[0])
        train = train_documents(a.split, len(docs))
        if len(train) == 0:
            raise UserError(f"--split {a.split!r} leaves no training documents out of {len(docs)}")
        source = docs if len(train) == len(docs) else _DocumentRange(docs, train)
        self.samples = PackedSamples(source, a.seq_length, a.train_iters * a.global_batch_size, a.seed)
        self.log(
            f"data: {len(train)} training documents of {len(docs)} from {a.data_path[0]}, {len(self.samples)} samples of "
            f"{a.seq_length}+1 tokens over {self.samples.epochs} epoch(s); {self.world} process(es) as data-parallel "
            f"replicas (Megatron data-parallel size {self.grid.dp}), micro batch {a.micro_batch_size}, gradient accumulation {self.accum}"
        )

    # -- training --------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        a = self.a
        return learning_rate(step, max_lr=a.lr, min_lr=a.min_lr, train_iters=a.train_iters,
                             warmup_fraction=a.lr_warmup_fraction or 0.0, style=a.lr_decay_style)  # fmt: skip

    def _micro_batch(self, consumed: int, micro_step: int) -> torch.Tensor:
        idx = micro_batch_indices(consumed, micro_step, self.rank, self.a.micro_batch_size, self.world)
        return torch.from_numpy(np.stack([self.samples[i] for i in idx]))

    def train_step(self) -> tuple[float, float]:
        a = self.a
        assert self.opt is not None and self.model is not None
        lr = self._lr(self.iteration)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros(())
        vocab = self.dims.vocab_size
        for m in range(self.accum):
            batch = self._micro_batch(self.consumed, m)
            inputs, labels = batch[:, :-1], batch[:, 1:]
            # Gradients are all-reduced once per iteration, on the last micro batch.
            sync = contextlib.nullcontext() if m == self.accum - 1 else self.ddp.no_sync()
            with sync:
                logits = self.ddp(input_ids=inputs).logits
                loss = F.cross_entropy(logits.float().reshape(-1, vocab), labels.reshape(-1))
                (loss / self.accum).backward()
            loss_sum += loss.detach()
        max_norm = a.clip_grad if a.clip_grad > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        self.opt.step()
        loss_avg = loss_sum / self.accum
        dist.all_reduce(loss_avg)
        loss_value = float(loss_avg) / self.world
        if not np.isfinite(loss_value):
            raise RuntimeError(f"loss is {loss_value} at iteration {self.iteration + 1}")
        self.iteration += 1
        self.consumed += a.global_batch_size
        return loss_value, grad_norm

    def _optimizer_export(self) -> dict[str, dict[str, torch.Tensor]]:
        assert self.opt is not None and self.model is not None
        out = {}
        for n, param in self.model.named_parameters():
            state = {k: v.detach().clone() for k, v in self.opt.state.get(param, {}).items()}
            out[n] = {"main_param": param.detach().clone(), **state}
        return out

    def save(self) -> None:
        a = self.a
        assert self.model is not None
        started = time.time()
        keep_optim = not a.no_save_optim
        req = SaveRequest(
            save_dir=Path(a.save), iteration=self.iteration, dims=self.dims, par=self.par, params_dtype=a.params_dtype,
            hf_state={k: v.detach() for k, v in self.model.state_dict().items()},
            optimizer=self._optimizer_export() if keep_optim else None,
            scheduler=scheduler_state(a, self.consumed) if keep_optim else None,
            rng=None if a.no_save_rng else rng_state(),
            distributed_optimizer=a.use_distributed_optimizer,
            extra_args={"seq_length": a.seq_length, "micro_batch_size": a.micro_batch_size,
                        "global_batch_size": a.global_batch_size, "train_iters": a.train_iters,
                        "consumed_train_samples": self.consumed, "lr": a.lr, "min_lr": a.min_lr, "seed": a.seed,
                        "use_distributed_optimizer": a.use_distributed_optimizer},
            flops_so_far=self.flops_so_far,
        )  # fmt: skip
        path = save_iteration(req, rank=self.rank, local_rank=self.local_rank, grid=self.grid,
                              per_node=a.no_shared_storage, barrier=dist.barrier)  # fmt: skip
        if self.rank == 0:
            print(f"saved checkpoint at iteration {self.iteration:8d} to {path} ({time.time() - started:.1f} s)", flush=True)

    def run(self) -> None:
        a = self.a
        d = self.dims
        flops = gpt_flops_per_iteration(
            batch_size=a.global_batch_size, seq_length=a.seq_length, num_layers=d.num_layers, hidden_size=d.hidden_size,
            ffn_hidden_size=d.ffn_hidden_size, num_attention_heads=d.num_attention_heads,
            num_query_groups=d.num_query_groups, vocab_size=a.padded_vocab_size, kv_channels=d.head_dim,
        )  # fmt: skip
        tokens = a.global_batch_size * a.seq_length
        interval_start = time.time()
        interval_iters = 0
        saved_at = self.iteration  # nothing new to save unless an iteration runs
        saving = a.save is not None
        while self.iteration < a.train_iters:
            loss, grad_norm = self.train_step()
            self.flops_so_far += flops
            interval_iters += 1
            if self.iteration % a.log_interval == 0:
                elapsed = (time.time() - interval_start) / interval_iters
                stats = IterationStats(
                    iteration=self.iteration, train_iters=a.train_iters,
                    consumed_samples=self.consumed, elapsed_ms=elapsed * 1000.0,
                    throughput_tflops=flops / elapsed / self.world / 1e12 if a.log_throughput else None,
                    tokens_per_second=tokens / elapsed / self.world if a.log_throughput else None,
                    learning_rate=self._lr(self.iteration),
                    global_batch_size=a.global_batch_size, lm_loss=loss, grad_norm=grad_norm,
                )  # fmt: skip
                self.log(format_iteration_line(stats))
                if self.scalars is not None:
                    self.scalars.iteration(stats)
                interval_start, interval_iters = time.time(), 0
            exiting = a.exit_interval is not None and self.iteration % a.exit_interval == 0
            if saving and (self.iteration % a.save_interval == 0 or exiting):
                self.save()
                saved_at = self.iteration
                interval_start = time.time()  # saving is not training time
            if exiting and self.iteration < a.train_iters:
                self.log(f"exiting program at iteration {self.iteration} (--exit-interval {a.exit_interval})")
                return
        if saving and saved_at != self.iteration:
            self.save()  # as Megatron: the end of training is saved unless the interval just did
        self.log(f"training finished at iteration {self.iteration}")
        if self.scalars is not None:
            self.scalars.close()


def main(argv: list[str] | None = None) -> int:
    rank = os.environ.get("RANK", "?")
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"q7x2-runtime pretrain (rank {rank}): error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # Collectives wait at least this long: long enough for a peer's checkpoint save, short
    # enough that a vanished peer ends the job instead of hanging it.
    timeout = datetime.timedelta(seconds=max(int(os.environ.get(CONNECT_TIMEOUT_ENV, "0") or 0), 600))
    dist.init_process_group("gloo", timeout=timeout)
    try:
        trainer = Trainer(args)
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
