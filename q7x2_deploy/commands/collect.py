"""`q7x2-deploy collect INVENTORY [--iteration N] DEST [--to-hf HF_DIR]`: one checkpoint from every
host (and the replica store) into one directory on this machine, checked complete; optionally
converted to an HF folder.

The HF conversion runs here, in-process, with the runtime's own converter (the one the image
uses): the collected checkpoint is already on this machine, the converter streams tensor by
tensor with little memory, and running the image instead would need a local Docker engine and an
image built for this machine's architecture (the ascend image is usually aarch64). It needs torch,
which the deployer alone does not install: `pip install 'q7x2-deploy[runtime]'`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.collect import collect
from q7x2_deploy.commands.session import add_host_key_argument, add_inventory_argument, cluster_from_args
from q7x2_deploy.plan import Plan


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "collect", help="gather a checkpoint from every host into one local directory (optionally as HF)",
        description="Gather one checkpoint iteration (default: the newest the hosts and the replica hold whole) "
        "from every host's save_dir and the replica store into DEST, in Megatron's layout with its tracker, "
        "and check it is complete.")
    add_inventory_argument(p)
    p.add_argument("dest", metavar="DEST", type=Path, help="local directory for the checkpoint (must not hold one)")
    p.add_argument("--iteration", type=int, default=None, metavar="N", help="the iteration to collect")
    p.add_argument("--to-hf", type=Path, default=None, metavar="HF_DIR",
                   help="also convert it to an HF folder (needs torch: q7x2-deploy[runtime])")
    p.add_argument("--hf-template", type=Path, default=None, metavar="DIR",
                   help="with --to-hf: an HF folder of the same model whose config and tokenizer files are copied")
    add_host_key_argument(p)
    p.set_defaults(func=run)


def _check_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise DeployError(f"{dest}: exists and is not a directory; give a new or empty directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise DeployError(f"{dest}: not empty; give a new or empty directory so checkpoints never mix")


def _to_hf(dest: Path, n: int, hf: Path, template: Path | None, plan: Plan) -> Path:
    try:
        from q7x2_runtime.convert.to_hf import convert_mcore_to_hf
    except ImportError as e:
        raise DeployError(f"--to-hf needs torch on this machine ({e}); pip install 'q7x2-deploy[runtime]'") from None
    return convert_mcore_to_hf(dest, hf, n, plan.job_spec.job.training.params_dtype, template, False)


def run(args: argparse.Namespace) -> int:
    _check_dest(args.dest)
    if args.hf_template is not None and args.to_hf is None:
        raise DeployError("--hf-template applies to --to-hf only")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with cluster_from_args(args) as cluster:
        n = collect(cluster, args.dest, args.iteration, log)
        plan = cluster.plan
    print(f"{args.dest}: iteration {n} of job {plan.job_name}, complete")
    if args.to_hf is not None:
        out = _to_hf(args.dest, n, args.to_hf, args.hf_template, plan)
        print(f"{out}: HF folder of iteration {n}")
    return 0
