"""`q7x2-runtime pretrain --job JOB`: run this node's share of the pretraining job."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from q7x2_runtime.errors import UserError


def _load(path: Path):
    from pydantic import ValidationError

    from q7x2_runtime.jobspec import JobSpec

    try:
        return JobSpec.load(path)
    except FileNotFoundError:
        raise UserError(f"job file {path} does not exist") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise UserError(f"job file {path}: {where}: {first.get('msg')}") from None


def _decide_start(spec, placement):
    """Survey this node's save_dir, agree with the other nodes, fix the tracker to the decision."""
    from q7x2_runtime.pretrain.agree import exchange
    from q7x2_runtime.pretrain.start import decide, point_tracker_at, survey

    job = spec.job
    mine = survey(job, placement.node_rank)
    decided = []

    def fix(surveys) -> None:
        start = decide(job, surveys)
        # Shared storage: one node rewrites the one tracker; per-node: each node its own.
        if job.storage == "per-node" or placement.node_rank == 0:
            if point_tracker_at(job, start):
                start.notes.append(f"tracker of {job.paths.save_dir} set to iteration {start.iteration}")
        decided.append(start)

    if placement.nnodes == 1:
        fix([mine])
    else:
        exchange(placement, mine, fix)
    return decided[0]


def _run(args: argparse.Namespace) -> int:
    from q7x2_runtime.pretrain import launch
    from q7x2_runtime.pretrain.failure import explain_failure, read_new_output
    from q7x2_runtime.pretrain.node import resolve_placement, wait_for_master
    from q7x2_runtime.convert.layout import read_latest_iteration
    from q7x2_runtime.pretrain.start import decide, survey
    from q7x2_runtime.run_step import run_teed

    spec = _load(args.job)
    engine = args.engine or launch.default_engine(spec)
    placement = resolve_placement(spec, os.environ, args.node_rank, args.placement)
    log = launch.log_file(spec, placement.node_rank)
    if args.dry_run:
        # This node's own view of save_dir; the real launch also agrees with the other nodes.
        start = decide(spec.job, [survey(spec.job, placement.node_rank)])
        print(shlex.join(launch.engine_argv(spec, placement, engine, start.kind, exit_interval=args.exit_interval)))
        return 0
    prefix = f"q7x2-runtime pretrain: node {placement.node_rank}"
    print(f"{prefix}: job {spec.job.name}, engine {engine}, {placement.describe()}; log {log}", flush=True)
    if not spec.job.checkpoint.keep_optimizer:
        print(f"{prefix}: warning: checkpoints keep no optimizer or RNG state (job.checkpoint.keep_optimizer false): "
              "a resume will not continue exactly", flush=True)  # fmt: skip
    from q7x2_runtime.pretrain import replica_sync

    replica_sync.restore_for_job(spec, placement.node_rank)  # per-node storage: before the nodes agree where to start
    if placement.nnodes > 1:
        # The start-point exchange needs torch.distributed, seconds to import. Importing it before
        # the wait overlaps this node's import with the master's own (which must finish before the
        # master answers) instead of starting it only once the master answers: seconds off every
        # start and every restart.
        import torch.distributed  # noqa: F401
    if placement.node_rank != 0 and placement.nnodes > 1:
        waited = wait_for_master(placement.master_addr, placement.master_port, placement.connect_timeout_s, node_rank=placement.node_rank)
        print(f"{prefix}: master {placement.master_addr}:{placement.master_port} reachable after {waited:.1f} s", flush=True)
    start = _decide_start(spec, placement)
    if start.kind == "first" and read_latest_iteration(Path(spec.job.paths.mcore_weights)) is None:
        # Megatron would start from random weights here, silently.
        raise UserError(
            f"no converted weights in {spec.job.paths.mcore_weights} (no latest_checkpointed_iteration.txt) and no "
            f"checkpoint in {spec.job.paths.save_dir}: run the convert step first"
        )
    print(f"{prefix}: start point: {start.describe()}", flush=True)
    for note in start.notes:
        print(f"{prefix}: note: {note}", flush=True)
    argv = launch.engine_argv(spec, placement, engine, start.kind, exit_interval=args.exit_interval)
    if engine == "mindspeed":
        from q7x2_runtime.convert.mindspeed import mindspeed_dir

        env = launch.mindspeed_environment(spec, os.environ)
        llm_dir = Path(mindspeed_dir())
        if not llm_dir.is_dir():
            raise UserError(f"MindSpeed-LLM directory {llm_dir} does not exist in this image (set MINDSPEED_LLM_DIR)")
        cwd: Path | None = llm_dir
    else:
        env = launch.torch_environment(spec, os.environ)
        cwd = None
    print(f"{prefix}: + {shlex.join(argv)}", flush=True)
    offset = log.stat().st_size if log.is_file() else 0
    with replica_sync.replicating(spec, placement.node_rank) as replicator:  # per-node storage: copies each save meanwhile
        code = run_teed(argv, log=log, cwd=cwd, env=env)
        if code == 0 and replicator is not None:
            replicator.wait_for_next_host()  # the last save of the other nodes, so every host ends whole
    if code != 0:
        status = 128 - code if code < 0 else code
        reason = explain_failure(read_new_output(log, offset), placement)
        print(
            f"{prefix}: training exited with status {status}"
            + (f": {reason}" if reason else "")
            + f"; see {log}",
            file=sys.stderr,
            flush=True,
        )
        return status
    return 0


def register(subparsers) -> None:
    from q7x2_runtime.pretrain.node import PLACEMENT_SOURCES

    p = subparsers.add_parser(
        "pretrain",
        help="run this node's share of the pretraining job (MindSpeed-LLM on Ascend, or the CPU trainer)",
        description="Wait for the master, agree with the other nodes where training starts from (the newest "
        "checkpoint complete on every node, else the converted weights), then start torchrun for this node: "
        "MindSpeed-LLM's pretrain_gpt.py (engine mindspeed, the default on ascend) or the CPU trainer on the same "
        "arguments (engine torch, the default on cpu). NODE_RANK comes from the environment (on Kubernetes from the "
        "operator's RANK and WORLD_SIZE, --placement); everything else "
        "from the job file.",
    )
    p.add_argument("--job", required=True, type=Path, help="the job spec JSON written by the deployer")
    p.add_argument("--engine", choices=("mindspeed", "torch"), default=None, help="override the engine chosen by the cluster flavor")
    p.add_argument("--node-rank", type=int, default=None, help="this node's rank (default: $NODE_RANK)")
    p.add_argument("--placement", choices=PLACEMENT_SOURCES, default="deployer",
                   help="who says where this node sits: the deployer (NODE_RANK, NNODES, MASTER_ADDR, MASTER_PORT; the default), "
                   "MindCluster's ascend-operator (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or Volcano's "
                   "pytorch plugin (RANK, WORLD_SIZE = pods, MASTER_ADDR, MASTER_PORT)")
    p.add_argument("--exit-interval", type=int, default=None, metavar="N",
                   help="save a checkpoint and stop after an iteration divisible by N (passed on as Megatron's --exit-interval)")
    p.add_argument("--dry-run", action="store_true", help="print the torchrun line this node would run now (its own view of save_dir) and exit")
    p.set_defaults(func=_run)
