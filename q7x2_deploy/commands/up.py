"""`q7x2-deploy up INVENTORY`: preflight, deliver the image, run prepare then train."""

from __future__ import annotations

import argparse

from rich.console import Console

from q7x2_deploy.executor.output import LogSink
from q7x2_deploy.executor.session import add_host_key_argument, add_inventory_argument, cluster_from_args
from q7x2_deploy.executor.table import print_preflight
from q7x2_deploy.executor.up import UpHooks, up


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="start the job on every host and stream its logs")
    add_inventory_argument(p)
    p.add_argument("--detach", "-d", action="store_true",
                   help="return once training has started (prepare still runs to completion first)")
    add_host_key_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    with cluster_from_args(args) as cluster:
        sink = LogSink(cluster.plan.job_name)
        try:
            return up(cluster, sink, detach=args.detach,
                      hooks=UpHooks(on_preflight=lambda r: print_preflight(r, console)))
        finally:
            sink.close()
