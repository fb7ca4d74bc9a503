"""The CPU trainer's command line: the Megatron arguments steps.py builds for pretrain_gpt.py.

The reference trainer is driven by exactly the list MindSpeed-LLM gets, so a mistake in that list
shows up on cpu as a wrong start iteration or a loss that does not continue. Three kinds:
- arguments with a meaning on cpu, parsed with Megatron's (core_r0.8.0 arguments.py) names and
  defaults;
- the rest of the reference set (kernel fusions, tokenizer, eval, ...): accepted and listed once
  in the log as having no effect on cpu;
- anything else: refused with one line, as an argument q7x2 never gives MindSpeed-LLM.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from q7x2_runtime.errors import UserError

# Reference-set arguments the cpu trainer accepts and ignores: option -> takes a value.
NO_EFFECT: dict[str, bool] = {
    "--use-mcore-models": False,
    "--sequence-parallel": False,
    "--use-flash-attn": False,
    "--use-fused-swiglu": False,
    "--use-fused-rmsnorm": False,
    "--use-fused-rotary-pos-emb": False,
    "--make-vocab-size-divisible-by": True,
    "--tokenizer-type": True,
    "--tokenizer-name-or-path": True,
    "--initial-loss-scale": True,
    "--no-gradient-accumulation-fusion": False,
    "--no-masked-softmax-fusion": False,
    "--attention-softmax-in-fp32": False,
    "--eval-interval": True,
    "--eval-iters": True,
    "--distributed-backend": True,  # gloo on cpu, whatever the list says
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"cpu trainer arguments: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="q7x2_runtime.pretrain.trainer", add_help=False, allow_abbrev=False)
    a = p.add_argument
    # parallel layout: decides the checkpoint layout and who writes which file (compute is data parallel)
    a("--tensor-model-parallel-size", type=int, default=1)
    a("--pipeline-model-parallel-size", type=int, default=1)
    a("--num-layer-list", type=str, default=None)
    # the model (must equal the checkpoint's, as Megatron's strict load requires)
    a("--num-layers", type=int, required=True)
    a("--hidden-size", type=int, required=True)
    a("--ffn-hidden-size", type=int, required=True)
    a("--num-attention-heads", type=int, required=True)
    a("--group-query-attention", action="store_true")
    a("--num-query-groups", type=int, default=1)
    a("--max-position-embeddings", type=int, required=True)
    a("--seq-length", type=int, required=True)
    a("--disable-bias-linear", action="store_true")
    a("--add-qkv-bias", action="store_true")
    a("--swiglu", action="store_true")
    a("--normalization", default="LayerNorm")
    a("--norm-epsilon", type=float, default=1e-5)
    a("--position-embedding-type", default="learned_absolute")
    a("--rotary-base", type=int, default=10000)
    a("--untie-embeddings-and-output-weights", action="store_true")
    a("--padded-vocab-size", type=int, required=True)
    a("--attention-dropout", type=float, default=0.1)
    a("--hidden-dropout", type=float, default=0.1)
    a("--init-method-std", type=float, default=0.02)
    # batches, schedule, optimizer
    a("--micro-batch-size", type=int, required=True)
    a("--global-batch-size", type=int, required=True)
    a("--train-iters", type=int, required=True)
    a("--lr", type=float, required=True)
    a("--min-lr", type=float, default=0.0)
    a("--lr-decay-style", choices=("constant", "linear", "cosine"), default="linear")
    a("--lr-warmup-fraction", type=float, default=None)
    a("--weight-decay", type=float, default=0.01)
    a("--clip-grad", type=float, default=1.0)
    a("--adam-beta1", type=float, default=0.9)
    a("--adam-beta2", type=float, default=0.999)
    a("--bf16", action="store_true")
    a("--fp16", action="store_true")
    a("--use-distributed-optimizer", action="store_true")
    a("--seed", type=int, default=1234)
    # data
    a("--data-path", nargs="*", default=None)
    a("--split", default="969, 30, 1")
    # checkpoints
    a("--load", default=None)
    a("--no-load-optim", action="store_true")
    a("--no-load-rng", action="store_true")
    a("--finetune", action="store_true")
    a("--save", default=None)
    a("--save-interval", type=int, default=None)
    a("--no-save-optim", action="store_true")
    a("--no-save-rng", action="store_true")
    a("--no-shared-storage", action="store_true")
    a("--exit-interval", type=int, default=None)
    # logging
    a("--log-interval", type=int, default=100)
    a("--log-throughput", action="store_true")
    a("--tensorboard-dir", default=None)
    for option, takes_value in NO_EFFECT.items():
        if takes_value:
            a(option, dest=f"_ignored_{option[2:]}", default=None)
        else:
            a(option, dest=f"_ignored_{option[2:]}", action="store_true")
    return p


@dataclass(frozen=True)
class TrainerArgs:
    """The parsed list: Megatron's namespace plus what the cpu trainer ignored."""

    ns: argparse.Namespace
    no_effect: list[str]  # options present in the list that do nothing on cpu, in list order

    def __getattr__(self, name: str):  # the namespace's fields, read-only
        return getattr(self.ns, name)

    @property
    def params_dtype(self) -> str:
        return "bf16" if self.ns.bf16 else "fp16" if self.ns.fp16 else "fp32"

    @property
    def layer_list(self) -> list[int] | None:
        raw = self.ns.num_layer_list
        return [int(x) for x in raw.split(",")] if raw else None


def _check_architecture(ns: argparse.Namespace) -> None:
    """The cpu trainer builds Qwen2 only; a list describing another model is a mistake to show."""
    wrong = []
    if not ns.swiglu:
        wrong.append("--swiglu")
    if ns.normalization != "RMSNorm":
        wrong.append("--normalization RMSNorm")
    if ns.position_embedding_type != "rope":
        wrong.append("--position-embedding-type rope")
    if not ns.disable_bias_linear:
        wrong.append("--disable-bias-linear")
    if wrong:
        raise UserError(f"cpu trainer arguments: the reference trainer builds Qwen2 models and needs {', '.join(wrong)}")
    if ns.hidden_dropout != 0.0:
        raise UserError(f"cpu trainer arguments: --hidden-dropout {ns.hidden_dropout:g}: the reference trainer has no hidden dropout; give 0.0")


def _check_values(ns: argparse.Namespace) -> None:
    if ns.bf16 and ns.fp16:
        raise UserError("cpu trainer arguments: --bf16 and --fp16 are exclusive")
    if not ns.data_path:
        raise UserError("cpu trainer arguments: --data-path is required")
    if len(ns.data_path) != 1:
        raise UserError(f"cpu trainer arguments: --data-path takes one dataset prefix on cpu (got {len(ns.data_path)} entries; no blends)")
    if ns.save is not None and ns.save_interval is None:
        raise UserError("cpu trainer arguments: --save needs --save-interval")
    for name in ("micro_batch_size", "global_batch_size", "train_iters", "log_interval"):
        if getattr(ns, name) < 1:
            raise UserError(f"cpu trainer arguments: --{name.replace('_', '-')} must be >= 1")


def parse(argv: list[str]) -> TrainerArgs:
    """Parse the reference list; one UserError line for anything outside it or inconsistent."""
    parser = _parser()
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        first = next((x for x in unknown if x.startswith("-")), unknown[0])
        raise UserError(
            f"cpu trainer arguments: {first} is not in the reference argument set q7x2 gives MindSpeed-LLM; "
            "the cpu trainer refuses it"
        )
    _check_architecture(ns)
    _check_values(ns)
    no_effect = [x for x in argv if x in NO_EFFECT]
    return TrainerArgs(ns, list(dict.fromkeys(no_effect)))


def split_fractions(split: str) -> list[float]:
    """Megatron's --split ("969,30,1" or "100,0,0"): three weights normalised to fractions."""
    try:
        weights = [float(x) for x in split.replace("/", ",").split(",") if x.strip()]
    except ValueError:
        raise UserError(f"cpu trainer arguments: --split {split!r} is not a list of numbers") from None
    weights = (weights + [0.0, 0.0, 0.0])[:3]
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise UserError(f"cpu trainer arguments: --split {split!r} must hold non-negative weights with a positive sum")
    return [w / total for w in weights]


def train_documents(split: str, num_documents: int) -> range:
    """The documents of the training split, as Megatron cuts a dataset into train/valid/test:
    consecutive ranges of rounded sizes, the rounding error taken from the first split."""
    fractions = split_fractions(split)
    bounds = [0]
    for f in fractions:
        bounds.append(bounds[-1] + int(round(f * float(num_documents))))
    diff = bounds[-1] - num_documents
    for i in range(1, len(bounds)):
        bounds[i] -= diff
    return range(bounds[0], bounds[1])
