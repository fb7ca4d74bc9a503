"""The CPU trainer reads the argument list MindSpeed-LLM gets: parsed, ignored-and-listed, or refused."""

from __future__ import annotations

import pytest

from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.pretrain.megatron_args import NO_EFFECT, parse, train_documents
from q7x2_runtime.steps import pretrain_gpt_args


def _spec(**job) -> JobSpec:
    return JobSpec.model_validate({
        "job": {"model": {"preset": "qwen2.5-7b"}, "parallelism": {"tp": 4, "pp": 2, "npus_per_node": 8},
                "training": {"seq_length": 4096}, **job},
        "cluster": {"nnodes": 2, "master_addr": "10.0.0.1", "master_port": 6000, "flavor": "cpu"},
    })  # fmt: skip


def _args(kind: str = "first", **job) -> list[str]:
    return [*pretrain_gpt_args(_spec(**job), kind), "--distributed-backend", "nccl"]


def test_the_reference_list_parses_with_megatron_meanings() -> None:
    a = parse(_args("first"))
    assert (a.tensor_model_parallel_size, a.pipeline_model_parallel_size) == (4, 2)
    assert (a.load, a.no_load_optim, a.no_load_rng, a.finetune) == ("/apps/models/Qwen2.5-7B-mcore", True, True, True)
    assert (a.save, a.save_interval, a.train_iters, a.seq_length) == ("/apps/ckpt/qwen25-7b", 2000, 2000, 4096)
    assert a.use_distributed_optimizer and not a.no_save_optim and not a.no_save_rng
    assert a.params_dtype == "bf16" and a.data_path == ["/apps/datasets/alpaca/alpaca_text_document"]
    assert (a.lr, a.min_lr, a.lr_decay_style, a.lr_warmup_fraction) == (1.25e-6, 1.25e-7, "cosine", 0.01)
    r = parse(_args("resume"))
    assert (r.load, r.no_load_optim, r.no_load_rng, r.finetune) == ("/apps/ckpt/qwen25-7b", False, False, False)
    per_node = parse(_args("resume", storage="per-node"))
    assert per_node.no_shared_storage and not r.no_shared_storage


def test_arguments_without_effect_are_listed_once_in_list_order() -> None:
    argv = _args()
    a = parse(argv + ["--use-flash-attn"])
    assert a.no_effect[:3] == ["--use-mcore-models", "--sequence-parallel", "--use-flash-attn"]
    assert len(a.no_effect) == len(set(a.no_effect))
    assert set(a.no_effect) == {x for x in argv if x in NO_EFFECT}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--recompute-granularity", "full"], r"--recompute-granularity is not in the reference argument set"),
        (["--tensor-model-parallel-size"], r"expected one argument"),
        (["--data-path", "a", "b"], r"takes one dataset prefix on cpu"),
        (["--fp16"], r"--bf16 and --fp16 are exclusive"),
        (["--hidden-dropout", "0.1"], r"no hidden dropout"),
        (["--normalization", "LayerNorm"], r"builds Qwen2 models and needs --normalization RMSNorm"),
    ],
)
def test_refusals_are_one_line(extra: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message) as e:
        parse(_args() + extra)
    assert "\n" not in str(e.value)


def test_abbreviations_are_not_guessed() -> None:
    with pytest.raises(UserError, match="--train-it is not in the reference"):
        parse(_args() + ["--train-it", "5"])


def test_split_takes_megatron_document_ranges() -> None:
    assert train_documents("100,0,0", 10) == range(0, 10)
    assert train_documents("969,30,1", 1000) == range(0, 969)
    assert train_documents("8,1,1", 7) == range(0, 5)  # rounding error taken from the training split
