"""The command of each job step, as argv lists built from the job spec.

One place for every argument: the deployer's plan shows these exact lists, and the runtime
executes the same ones, so conversion, preprocessing and training cannot drift apart (converting
at one tp/pp and training at another is the classic mistake of doing it by hand). Nothing here touches a shell; quoting, if
ever needed for display, happens once in `shlex.join`.
"""

from __future__ import annotations

from typing import Literal

from q7x2_runtime.convert.mindspeed import DEFAULT_DIR, mindspeed_convert_argv
from q7x2_runtime.jobspec import Engine, Job, JobSpec

# A training start: from the converted weights, or resuming the job's own checkpoint.
StartKind = Literal["first", "resume"]
START_KINDS: tuple[StartKind, ...] = ("first", "resume")

# Where the ascend image puts MindSpeed-LLM (templates/Dockerfile.ascend.j2). The plan always
# names the image's path; a process inside a container honours $MINDSPEED_LLM_DIR instead.
MINDSPEED_LLM_DIR = DEFAULT_DIR
# Where every container finds the job spec (the deployer mounts the host's job dir here).
JOB_FILE_IN_CONTAINER = "/etc/q7x2/job.json"


def step_tool(job: Job, step: str, flavor: str) -> Engine:
    """Which implementation runs a prepare step: the job's choice, else MindSpeed on ascend."""
    chosen = getattr(job.tools, step)
    if chosen is not None:
        return chosen
    return "mindspeed" if flavor == "ascend" else "q7x2"


def num(x: float) -> str:
    """Numbers as Megatron's argparse takes them: integers bare (--rotary-base is type=int),
    others in the shortest form with a plain exponent (1.25e-6, not 1.25e-06)."""
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    mantissa, e, exp = f"{x:g}".partition("e")
    return f"{mantissa}e{int(exp)}" if e else mantissa


def _num_layer_list(job: Job) -> list[str]:
    nll = job.parallelism.num_layer_list
    return ["--num-layer-list", ",".join(str(n) for n in nll)] if nll else []


def _logged(job: Job, log_name: str, argv: list[str]) -> list[str]:
    """Run a MindSpeed-LLM script from its directory with the CANN env, teeing to a log file."""
    log = f"{job.paths.logs.rstrip('/')}/{log_name}"
    return ["q7x2-runtime", "run", "--cann-env", "--cwd", MINDSPEED_LLM_DIR, "--log", log, "--", *argv]


def convert_argv(job: Job, flavor: str) -> list[str]:
    p, paths = job.parallelism, job.paths
    if step_tool(job, "convert", flavor) == "mindspeed":
        argv = mindspeed_convert_argv(
            "hf", "mg", paths.hf_weights, paths.mcore_weights, p.tp, p.pp, p.num_layer_list,
            job.training.params_dtype,
            tokenizer_model=f"{paths.tokenizer_path.rstrip('/')}/tokenizer.json",
            mindspeed_llm_dir=MINDSPEED_LLM_DIR,
        )  # fmt: skip
        return _logged(job, f"convert_{job.name}.log", argv)
    return [
        "q7x2-runtime", "convert",
        "--load-model-type", "hf",
        "--save-model-type", "mg",
        "--target-tensor-parallel-size", str(p.tp),
        "--target-pipeline-parallel-size", str(p.pp),
        *_num_layer_list(job),
        "--load-dir", paths.hf_weights,
        "--save-dir", paths.mcore_weights,
        "--params-dtype", job.training.params_dtype,
        # Re-running a job reuses a finished conversion with the same settings.
        "--skip-existing",
    ]  # fmt: skip


def preprocess_argv(job: Job, flavor: str) -> list[str]:
    paths, pre = job.paths, job.preprocess
    args = [
        "--input", paths.raw_dataset,
        "--tokenizer-name-or-path", paths.tokenizer_path,
        "--tokenizer-type", "PretrainedFromHF",
        "--output-prefix", paths.dataset_prefix,
        "--workers", str(pre.workers),
        "--log-interval", str(pre.log_interval),
    ]  # fmt: skip
    if pre.json_keys != ["text"]:
        args += ["--json-keys", *pre.json_keys]
    if pre.append_eod:
        args.append("--append-eod")
    if step_tool(job, "preprocess", flavor) == "q7x2":
        return ["q7x2-runtime", "preprocess", *args]
    return _logged(job, f"preprocess_{job.name}.log", ["python", "preprocess_data.py", *args])


def pretrain_gpt_args(spec: JobSpec, start: StartKind = "first") -> list[str]:
    """MindSpeed-LLM's pretrain_gpt.py arguments: the reference argument set (that of
    MindSpeed-LLM's examples/mcore/qwen25/pretrain_qwen25_7b_32k_ptd.sh) with the job's values,
    and the checkpoint flags of a first start or a resume (see `start_args`)."""
    job = spec.job
    d, p, t, paths = job.model.d, job.parallelism, job.training, job.paths
    args = [
        "--use-mcore-models",
        "--tensor-model-parallel-size", str(p.tp),
        "--pipeline-model-parallel-size", str(p.pp),
        *_num_layer_list(job),
    ]  # fmt: skip
    if p.tp > 1:
        args.append("--sequence-parallel")
    args += [
        "--num-layers", str(d.num_layers),
        "--hidden-size", str(d.hidden_size),
        "--ffn-hidden-size", str(d.ffn_hidden_size),
        "--num-attention-heads", str(d.num_attention_heads),
        "--max-position-embeddings", str(t.seq_length),
        "--seq-length", str(t.seq_length),
        "--disable-bias-linear",
    ]  # fmt: skip
    if d.qkv_bias:
        args.append("--add-qkv-bias")
    if d.num_query_groups != d.num_attention_heads:
        args += ["--group-query-attention", "--num-query-groups", str(d.num_query_groups)]
    args += [
        "--use-flash-attn",
        "--swiglu", "--use-fused-swiglu",
        "--normalization", "RMSNorm", "--norm-epsilon", num(d.norm_epsilon),
        "--use-fused-rmsnorm",
        "--position-embedding-type", "rope", "--rotary-base", num(d.rotary_base),
        "--use-fused-rotary-pos-emb",
    ]  # fmt: skip
    if d.untie_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    args += [
        "--micro-batch-size", str(t.micro_batch_size),
        "--global-batch-size", str(t.global_batch_size),
        "--make-vocab-size-divisible-by", "1",
        "--padded-vocab-size", str(d.vocab_size),
        "--tokenizer-type", "PretrainedFromHF",
        "--tokenizer-name-or-path", paths.tokenizer_path,
        "--attention-dropout", "0.0",
        "--hidden-dropout", "0.0",
        "--train-iters", str(t.train_iters),
        "--lr", num(t.lr),
        "--lr-decay-style", t.lr_decay_style,
        "--min-lr", num(t.min_lr),
        "--lr-warmup-fraction", num(t.lr_warmup_fraction),
        "--init-method-std", num(t.init_method_std),
        "--weight-decay", num(t.weight_decay),
        "--clip-grad", num(t.clip_grad),
        "--adam-beta1", num(t.adam_beta1),
        "--adam-beta2", num(t.adam_beta2),
        "--initial-loss-scale", "4096",
        "--no-gradient-accumulation-fusion",
        "--no-masked-softmax-fusion",
        "--attention-softmax-in-fp32",
    ]  # fmt: skip
    if t.params_dtype != "fp32":
        args.append(f"--{t.params_dtype}")
    if job.checkpoint.distributed_optimizer:
        args.append("--use-distributed-optimizer")
    args += [
        "--data-path", paths.data_path,
        "--split", "100,0,0",
        *start_args(job, start),
        "--seed", str(t.seed),
        "--save", paths.save_dir,
        "--log-interval", str(t.log_interval),
        "--save-interval", str(t.save_interval),
        "--eval-interval", str(t.train_iters),
        "--eval-iters", "0",
        "--log-throughput",
        # TensorBoard events under the logs path: both engines write Megatron's scalars there.
        "--tensorboard-dir", tensorboard_dir(job),
    ]  # fmt: skip
    if job.storage == "per-node":
        args.append("--no-shared-storage")
    return args


def tensorboard_dir(job: Job) -> str:
    return f"{job.paths.logs.rstrip('/')}/tensorboard/{job.name}"


def start_args(job: Job, start: StartKind) -> list[str]:
    """Where training starts from, in Megatron's terms (core_r0.8.0 load_checkpoint).

    first: the converted weights, as a fine-tune start: iteration 0, no optimizer or RNG read
    (the conversion holds neither). resume: save_dir, whose tracker names the iteration, with
    optimizer and RNG state as MindSpeed-LLM's checkpoint-resume guide asks (no --finetune, no
    --no-load-optim) -- unless the job keeps no optimizer state, when there is none to read.
    Checkpoints keep optimizer and RNG state unless the job says otherwise.
    """
    keep = job.checkpoint.keep_optimizer
    if start == "first":
        load = ["--load", job.paths.mcore_weights, "--no-load-optim", "--no-load-rng", "--finetune"]
    else:
        load = ["--load", job.paths.save_dir] + ([] if keep else ["--no-load-optim", "--no-load-rng"])
    return load + ([] if keep else ["--no-save-optim", "--no-save-rng"])


def torchrun_args(spec: JobSpec, node_rank: int) -> list[str]:
    c = spec.cluster
    return [
        "torchrun",
        # Static rendezvous waits 600 s by default; the job's connect timeout bounds it so a
        # missing peer ends the launch instead of hanging it.
        "--rdzv-conf", f"timeout={c.connect_timeout_s}",
        "--nproc_per_node", str(spec.job.parallelism.npus_per_node),
        "--nnodes", str(c.nnodes),
        "--node_rank", str(node_rank),
        "--master_addr", c.master_addr,
        "--master_port", str(c.master_port),
    ]  # fmt: skip


# The CPU reference trainer takes pretrain_gpt.py's place on the cpu flavor (same arguments).
CPU_TRAINER_MODULE = "q7x2_runtime.pretrain.trainer"


def engine_entry(flavor: str) -> list[str]:
    """What torchrun starts on each process slot: MindSpeed-LLM's script, or the CPU trainer."""
    return ["pretrain_gpt.py"] if flavor == "ascend" else ["-m", CPU_TRAINER_MODULE]


def pretrain_torchrun_argv(spec: JobSpec, node_rank: int, start: StartKind = "first") -> list[str]:
    """One node's training launch: torchrun ... <engine> <reference args>. Run from
    MindSpeed-LLM's directory on ascend; the same argument list drives the CPU trainer."""
    return [
        *torchrun_args(spec, node_rank),
        *engine_entry(spec.cluster.flavor),
        *pretrain_gpt_args(spec, start),
        "--distributed-backend", "nccl",
    ]  # fmt: skip


def pretrain_launches(spec: JobSpec, node_rank: int) -> dict[str, list[str]]:
    """The torchrun line of each start kind; the launcher picks one from the files at run time."""
    return {kind: pretrain_torchrun_argv(spec, node_rank, kind) for kind in START_KINDS}


def pretrain_log_name(spec: JobSpec, node_rank: int) -> str:
    # One file per node: on shared storage every node would otherwise write the same file.
    return f"pretrain_mcore_{spec.job.name}_node{node_rank}.log"


def pretrain_argv(spec: JobSpec, node_rank: int, placement: str = "deployer") -> list[str]:
    """The container command of the pretrain step, the same on both flavors: the launcher waits
    for the master, checks the cluster, decides the start point, then runs the engine. Under a
    Kubernetes operator (`placement`: ascend-operator, volcano-pytorch) the node rank and the
    node count come from the variables that operator injects."""
    argv = ["q7x2-runtime", "pretrain", "--job", JOB_FILE_IN_CONTAINER]
    return argv if placement == "deployer" else [*argv, "--placement", placement]
