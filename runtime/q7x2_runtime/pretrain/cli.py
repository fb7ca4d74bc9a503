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


def _run(args: argparse.Namespace) -> int:
    from q7x2_runtime.pretrain import launch
    from q7x2_runtime.pretrain.failure import explain_failure, read_new_output
    from q7x2_runtime.pretrain.node import resolve_placement, wait_for_master
    from q7x2_runtime.run_step import run_teed

    spec = _load(args.job)
    engine = args.engine or launch.default_engine(spec)
    placement = resolve_placement(spec, os.environ, args.node_rank)
    if args.exit_interval is not None and engine != "torch":
        raise UserError("--exit-interval is supported by the torch engine only")
    if engine == "mindspeed":
        argv = launch.mindspeed_argv(spec, placement)
        env = launch.mindspeed_environment(spec, os.environ)
        from q7x2_runtime.convert.mindspeed import mindspeed_dir

        cwd: Path | None = Path(mindspeed_dir())
    else:
        argv = launch.torch_argv(args.job.absolute(), placement, exit_interval=args.exit_interval)
        env = launch.torch_environment(spec, os.environ)
        cwd = None
    log = launch.log_file(spec, placement.node_rank)
    if args.dry_run:
        print(shlex.join(argv))
        return 0
    print(f"q7x2-runtime pretrain: job {spec.job.name}, engine {engine}, {placement.describe()}; log {log}", flush=True)
    if placement.node_rank != 0 and placement.nnodes > 1:
        waited = wait_for_master(placement.master_addr, placement.master_port, placement.connect_timeout_s, node_rank=placement.node_rank)
        print(f"q7x2-runtime pretrain: master {placement.master_addr}:{placement.master_port} reachable after {waited:.1f} s", flush=True)
    if cwd is not None and not cwd.is_dir():
        raise UserError(f"MindSpeed-LLM directory {cwd} does not exist in this image (set MINDSPEED_LLM_DIR)")
    offset = log.stat().st_size if log.is_file() else 0
    code = run_teed(argv, log=log, cwd=cwd, env=env)
    if code != 0:
        status = 128 - code if code < 0 else code
        reason = explain_failure(read_new_output(log, offset), placement)
        print(
            f"q7x2-runtime pretrain: node {placement.node_rank}: training exited with status {status}"
            + (f": {reason}" if reason else "")
            + f"; see {log}",
            file=sys.stderr,
            flush=True,
        )
        return status
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="run this node's share of the pretraining job (MindSpeed-LLM on Ascend, or the CPU trainer)",
        description="Start torchrun for this node: MindSpeed-LLM's pretrain_gpt.py (engine mindspeed, the "
        "default on ascend) or the CPU trainer over gloo (engine torch, the default on cpu). NODE_RANK comes "
        "from the environment; everything else from the job file.",
    )
    p.add_argument("--job", required=True, type=Path, help="the job spec JSON written by the deployer")
    p.add_argument("--engine", choices=("mindspeed", "torch"), default=None, help="override the engine chosen by the cluster flavor")
    p.add_argument("--node-rank", type=int, default=None, help="this node's rank (default: $NODE_RANK)")
    p.add_argument("--exit-interval", type=int, default=None, metavar="N",
                   help="torch engine: save a checkpoint and stop after an iteration divisible by N (as Megatron's --exit-interval)")
    p.add_argument("--dry-run", action="store_true", help="print the launch command and exit")
    p.set_defaults(func=_run)
