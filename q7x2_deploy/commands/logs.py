"""`q7x2-deploy logs INVENTORY [-f] [--host H] [--since T]`: every host's output, merged."""

from __future__ import annotations

import argparse
import os
import sys

from q7x2_deploy.executor.logs import follow_logs, show_logs
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.commands.scheduler_option import add_scheduler_argument, other_scheduler
from q7x2_deploy.commands.session import (
    add_host_key_argument,
    add_inventory_argument,
    cluster_from_args,
    load_plan,
    only_hosts,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("logs", help="show the job's logs from every host, prefixed [host rank]")
    add_inventory_argument(p)
    add_scheduler_argument(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep following (reconnects to lost hosts)")
    p.add_argument("--host", action="append", metavar="H", help="only this host (repeatable)")
    p.add_argument("--since", metavar="T", help="only lines since T (e.g. 10m, 2h, an RFC 3339 time)")
    add_host_key_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (rc := other_scheduler(args, "logs")) is not None:
        return rc
    plan = only_hosts(load_plan(args.inventory), args.host)
    # A full history replaces the local copy; a partial one must not truncate it.
    full = args.since is None
    sink = LogSink(plan.job_name, keep_files=full or args.follow, file_mode="w" if full else "a")
    try:
        with cluster_from_args(args, plan=plan) as cluster:
            if args.follow:
                follow_logs(cluster, sink, since=args.since)
            else:
                show_logs(cluster, sink, since=args.since)
    except BrokenPipeError:
        # `logs | head`: the reader has gone; that is not an error. Point stdout at devnull so
        # the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        sink.close()
    return 0
