"""`q7x2-deploy validate INVENTORY`: check the whole job; one line per violation, exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from q7x2_deploy.inventory import load_inventory
from q7x2_deploy.validation import file_warnings
from q7x2_deploy.plan import build_plan


def _validate(args: argparse.Namespace) -> int:
    inv = load_inventory(Path(args.inventory))
    for line in file_warnings(Path(args.inventory), inv):  # shown, never a failure
        print(line)
    build_plan(inv)  # what only the computed commands show (their length) is checked there
    world = len(inv.hosts) * inv.job.parallelism.npus_per_node
    p = inv.job.parallelism
    print(
        f"{args.inventory}: ok: {len(inv.hosts)} hosts, world size {world}, "
        f"tp {p.tp} x pp {p.pp} x dp {world // (p.tp * p.pp)}, image {inv.image.ref} ({inv.image.flavor})"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check an inventory; each violation on its own line")
    p.add_argument("inventory", help="inventory YAML file")
    p.set_defaults(func=_validate)
