"""The mindspeed engine: the exact launch command, and the CANN environment taken from set_env.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.pretrain import launch
from q7x2_runtime.pretrain.node import resolve_placement


def _spec(storage: str = "shared") -> JobSpec:
    return JobSpec.model_validate({
        "job": {
            "name": "qwen25-7b",
            "model": {"preset": "qwen2.5-7b"},
            "parallelism": {"tp": 4, "pp": 2, "npus_per_node": 8},
            "training": {"seq_length": 4096, "micro_batch_size": 1, "global_batch_size": 64},
            "paths": {"save_dir": "/apps/ckpt/qwen25-7b", "logs": "/apps/logs"},
            "storage": storage,
            "env": {"HCCL_CONNECT_TIMEOUT": "1200", "GLOO_SOCKET_IFNAME": "eth0"},
        },
        "cluster": {"nnodes": 2, "master_addr": "10.0.0.1", "master_port": 6000, "flavor": "ascend", "connect_timeout_s": 300},
    })  # fmt: skip


# The arguments of MindSpeed-LLM's pretrain_qwen25_7b_32k_ptd.sh with TP 4, PP 2, SEQ 4096 (the guide's value), MBS 1, GBS 64 and the default paths.
GOLDEN_NODE1 = (
    "torchrun --rdzv-conf timeout=300 --nproc_per_node 8 --nnodes 2 --node_rank 1 --master_addr 10.0.0.1 --master_port 6000 "
    "pretrain_gpt.py --use-mcore-models --tensor-model-parallel-size 4 --pipeline-model-parallel-size 2 "
    "--sequence-parallel --num-layers 28 --hidden-size 3584 --ffn-hidden-size 18944 --num-attention-heads 28 "
    "--max-position-embeddings 4096 --seq-length 4096 --disable-bias-linear --add-qkv-bias "
    "--group-query-attention --num-query-groups 4 --use-flash-attn --swiglu --use-fused-swiglu "
    "--normalization RMSNorm --norm-epsilon 1e-6 --use-fused-rmsnorm --position-embedding-type rope "
    "--rotary-base 1000000 --use-fused-rotary-pos-emb --untie-embeddings-and-output-weights "
    "--micro-batch-size 1 --global-batch-size 64 --make-vocab-size-divisible-by 1 --padded-vocab-size 152064 "
    "--tokenizer-type PretrainedFromHF --tokenizer-name-or-path /apps/models/Qwen2.5-7B "
    "--attention-dropout 0.0 --hidden-dropout 0.0 --train-iters 2000 --lr 1.25e-6 --lr-decay-style cosine "
    "--min-lr 1.25e-7 --lr-warmup-fraction 0.01 --init-method-std 0.01 --weight-decay 0.1 --clip-grad 1 "
    "--adam-beta1 0.9 --adam-beta2 0.95 --initial-loss-scale 4096 --no-gradient-accumulation-fusion "
    "--no-masked-softmax-fusion --attention-softmax-in-fp32 --bf16 --use-distributed-optimizer "
    "--data-path /apps/datasets/alpaca/alpaca_text_document --split 100,0,0 --load /apps/models/Qwen2.5-7B-mcore "
    "--no-load-optim --no-load-rng --finetune --seed 1234 --save /apps/ckpt/qwen25-7b "
    "--log-interval 1 --save-interval 2000 --eval-interval 2000 --eval-iters 0 --log-throughput --tensorboard-dir /apps/logs/tensorboard/qwen25-7b "
    "--distributed-backend nccl"
)
# A resume: save_dir with optimizer and RNG (MindSpeed-LLM's resume guide: distributed optimizer, no --finetune).
GOLDEN_NODE1_RESUME = GOLDEN_NODE1.replace(
    "--load /apps/models/Qwen2.5-7B-mcore --no-load-optim --no-load-rng --finetune", "--load /apps/ckpt/qwen25-7b"
)


def test_golden_command_line() -> None:
    spec = _spec()
    placement = resolve_placement(spec, {"NODE_RANK": "1", "NNODES": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "6000",
                                         "NPUS_PER_NODE": "8", "WORLD_SIZE": "16"})  # fmt: skip
    assert " ".join(launch.mindspeed_argv(spec, placement)) == GOLDEN_NODE1
    assert " ".join(launch.mindspeed_argv(spec, placement, "resume")) == GOLDEN_NODE1_RESUME
    assert launch.log_file(spec, 1).parent == Path("/apps/logs")


def test_the_cpu_engine_runs_the_same_arguments() -> None:
    spec = _spec()
    placement = resolve_placement(spec, {"NODE_RANK": "1"})
    for kind in ("first", "resume"):
        ascend = launch.engine_argv(spec, placement, "mindspeed", kind)
        cpu = launch.engine_argv(spec, placement, "torch", kind)
        i = ascend.index("pretrain_gpt.py")
        assert cpu[:i] == ascend[:i] and cpu[i : i + 2] == ["-m", "q7x2_runtime.pretrain.trainer"]
        assert cpu[i + 2 :] == ascend[i + 1 :]


def test_optimizer_state_is_dropped_only_when_the_job_asks() -> None:
    spec = _spec()
    for kind in ("first", "resume"):
        assert "--no-save-optim" not in launch.mindspeed_argv(spec, resolve_placement(spec, {"NODE_RANK": "0"}), kind)
    lean = spec.model_copy(deep=True)
    lean.job.checkpoint.keep_optimizer = False
    placement = resolve_placement(lean, {"NODE_RANK": "0"})
    first = " ".join(launch.mindspeed_argv(lean, placement, "first"))
    resume = " ".join(launch.mindspeed_argv(lean, placement, "resume"))
    assert "--no-load-optim --no-load-rng --finetune --no-save-optim --no-save-rng" in first
    # nothing to read back: the resume skips optimizer/RNG but still takes the iteration from the tracker
    assert "--load /apps/ckpt/qwen25-7b --no-load-optim --no-load-rng --no-save-optim --no-save-rng" in resume
    assert "--finetune" not in resume


def test_per_node_storage_and_master_from_environment() -> None:
    spec = _spec("per-node")
    placement = resolve_placement(spec, {"NODE_RANK": "0", "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "6001"})
    argv = launch.mindspeed_argv(spec, placement)
    assert "--no-shared-storage" in argv
    i = argv.index("--master_addr")
    assert argv[i : i + 4] == ["--master_addr", "10.0.0.9", "--master_port", "6001"]
    assert argv[argv.index("--node_rank") + 1] == "0"


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "NODE_RANK is not set"),
        ({"NODE_RANK": "2"}, "outside 0..1"),
        ({"NODE_RANK": "x"}, "not an integer"),
        ({"NODE_RANK": "0", "NNODES": "3"}, "NNODES=3"),
        ({"NODE_RANK": "0", "WORLD_SIZE": "8"}, "WORLD_SIZE=8"),
    ],
)
def test_placement_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_placement(_spec(), env)


def test_environment_sources_set_env_scripts(tmp_path: Path) -> None:
    toolkit = tmp_path / "ascend-toolkit" / "set_env.sh"
    atb = tmp_path / "atb" / "set_env.sh"
    toolkit.parent.mkdir()
    atb.parent.mkdir()
    toolkit.write_text('export ASCEND_TOOLKIT_HOME=/fake/toolkit\nexport LD_LIBRARY_PATH="/fake/lib:${LD_LIBRARY_PATH}"\n')
    atb.write_text('export ATB_HOME_PATH=/fake/atb\nexport PATH="/fake/atb/bin:$PATH"\nexport WITH_SPACE="a b"\n')
    container = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/base", "GLOO_SOCKET_IFNAME": "veth-node1"}
    env = launch.mindspeed_environment(_spec(), container, (str(toolkit), str(atb), str(tmp_path / "missing.sh")))
    assert env["ASCEND_TOOLKIT_HOME"] == "/fake/toolkit" and env["ATB_HOME_PATH"] == "/fake/atb"
    assert env["LD_LIBRARY_PATH"] == "/fake/lib:/base"
    assert env["PATH"] == "/fake/atb/bin:/usr/bin:/bin"
    assert env["WITH_SPACE"] == "a b"
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert env["HCCL_CONNECT_TIMEOUT"] == "1200"  # from the job
    assert env["GLOO_SOCKET_IFNAME"] == "veth-node1"  # the container's per-host value wins


def test_failing_set_env_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "set_env.sh"
    bad.write_text("echo broken >&2\nfalse\n")
    with pytest.raises(UserError, match="broken"):
        launch.mindspeed_environment(_spec(), {"PATH": os.environ["PATH"]}, (str(bad),))


def test_cli_dry_run_prints_the_command(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(_spec().to_json())
    env = {**os.environ, "NODE_RANK": "1"}
    out = subprocess.run([sys.executable, "-m", "q7x2_runtime.cli", "pretrain", "--job", str(job), "--dry-run"],
                         env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.strip() == GOLDEN_NODE1  # /apps/ckpt holds nothing here: a first start
