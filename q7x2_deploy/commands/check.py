"""`q7x2-deploy check INVENTORY`: parallel preflight of every host, as a table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.preflight import failure_message, preflight
from q7x2_deploy.commands.session import add_host_key_argument, add_inventory_argument, cluster_from_args
from q7x2_deploy.commands.table import print_preflight
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.validation import file_warnings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help="check every host is ready (SSH, engine, image, devices, disk)")
    add_inventory_argument(p)
    add_host_key_argument(p)
    p.add_argument("--deep", action="store_true",
                   help="also run `q7x2-runtime doctor` in a short-lived container of the image on every host "
                        "(the versions it holds against the pins it was built with)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    started = time.monotonic()
    inv = load_inventory(args.inventory)
    for line in file_warnings(Path(args.inventory), inv):
        console.print(Text(line, style="yellow"))
    with cluster_from_args(args, plan=build_plan(inv)) as cluster:
        reports = preflight(cluster, deep=args.deep)
    print_preflight(reports, console)
    if args.deep:  # failures are printed above; say what doctor found where it passed too
        for r in reports:
            if (c := r.get("doctor")) is not None and c.level == "ok":
                console.print(Text(f"  {r.host}: doctor: {c.detail}", style="dim"), soft_wrap=True)
    if (msg := failure_message(reports)) is not None:
        raise DeployError(msg)
    console.print(f"all {len(reports)} hosts ready ({time.monotonic() - started:.1f}s)")
    return 0
