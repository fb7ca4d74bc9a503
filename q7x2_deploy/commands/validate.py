"""`q7x2-deploy validate INVENTORY`: check the whole job; one line per violation, exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from q7x2_deploy.commands.scheduler_option import add_scheduler_argument
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.validation import file_warnings
from q7x2_deploy.plan import build_plan


def _validate(args: argparse.Namespace) -> int:
    inv = load_inventory(Path(args.inventory), scheduler=args.scheduler)
    for line in file_warnings(Path(args.inventory), inv):  # shown, never a failure
        print(line)
    kind = inv.scheduler.kind
    # What only the computed commands show (their length) is checked by building them.
    if kind == "ssh":
        build_plan(inv)
    elif kind == "slurm":
        from q7x2_deploy.backends.slurm.script import render_sbatch

        render_sbatch(inv)
    world = inv.nnodes * inv.job.parallelism.npus_per_node
    p = inv.job.parallelism
    nodes = f"{inv.nnodes} hosts" if kind == "ssh" else f"{inv.nnodes} {kind} nodes"
    print(
        f"{args.inventory}: ok: {nodes}, world size {world}, "
        f"tp {p.tp} x pp {p.pp} x dp {world // (p.tp * p.pp)}, image {inv.image.ref} ({inv.image.flavor})"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check an inventory; each violation on its own line")
    p.add_argument("inventory", help="inventory YAML file")
    add_scheduler_argument(p)
    p.set_defaults(func=_validate)
