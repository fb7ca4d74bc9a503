"""`q7x2-deploy up INVENTORY`: preflight, deliver the image, run prepare then train."""

from __future__ import annotations

import argparse

from rich.console import Console

from q7x2_deploy.executor.output import LogSink
from q7x2_deploy.executor.session import add_host_key_argument, add_inventory_argument, cluster_from_args
from q7x2_deploy.executor.supervise import QUIET_WARNING_S
from q7x2_deploy.executor.table import print_preflight
from q7x2_deploy.executor.up import UpHooks, up


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="start the job on every host and stream its logs")
    add_inventory_argument(p)
    p.add_argument("--detach", "-d", action="store_true",
                   help="return once training has started (prepare still runs to completion first)")
    p.add_argument("--quiet-warning", type=_minutes, default=QUIET_WARNING_S / 60, metavar="MINUTES",
                   help="say so when no host has printed anything for this long (default: %(default)g)")
    add_host_key_argument(p)
    p.set_defaults(func=run)


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of minutes")
    return value


def run(args: argparse.Namespace) -> int:
    console = Console()
    with cluster_from_args(args) as cluster:
        sink = LogSink(cluster.plan.job_name)
        try:
            return up(cluster, sink, detach=args.detach, quiet_warning_s=args.quiet_warning * 60,
                      hooks=UpHooks(on_preflight=lambda r: print_preflight(r, console)))
        finally:
            sink.close()
