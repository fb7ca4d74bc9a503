"""`q7x2-deploy up INVENTORY`: preflight, deliver the image, run prepare then train."""

from __future__ import annotations

import argparse
import os

from rich.console import Console

from q7x2_deploy.transport.factory import ssh_factory
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.executor.recovery_supervisor import start_supervisor
from q7x2_deploy.commands.scheduler_option import add_scheduler_argument, other_scheduler
from q7x2_deploy.commands.session import add_host_key_argument, add_inventory_argument, cluster_from_args
from q7x2_deploy.executor.supervise import QUIET_WARNING_S
from q7x2_deploy.commands.table import print_preflight
from q7x2_deploy.executor.up import UpHooks, up
from q7x2_deploy.inventory import Inventory
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import Plan, build_plan, first_difference, read_plan
from q7x2_runtime.errors import UserError
from q7x2_runtime.safe_text import escape_non_printing


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="start the job on every host and stream its logs")
    add_inventory_argument(p, optional=True)
    add_scheduler_argument(p)
    p.add_argument("--plan", metavar="PLAN.json",
                   help="run exactly this plan (`q7x2-deploy plan --json` wrote it). With INVENTORY too it must "
                        "be the plan the inventory gives now, and failures are recovered as the inventory says; "
                        "alone, recovery is off (it needs the inventory's spares and policy)")
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


def _plan_and_inventory(args: argparse.Namespace) -> tuple[Plan, Inventory | None]:
    if args.inventory is None and args.plan is None:
        raise UserError("up: give the INVENTORY, or --plan PLAN.json (or both)")
    inv = load_inventory(args.inventory, scheduler=args.scheduler) if args.inventory is not None else None
    if args.plan is None:
        assert inv is not None
        return build_plan(inv), inv
    plan = read_plan(args.plan)
    if inv is not None:
        now = build_plan(inv)
        if (where := first_difference(plan.to_dict(), now.to_dict())) is not None:
            raise UserError(escape_non_printing(
                f"{args.plan}: not the plan {args.inventory} gives now (first difference: {where}); "
                "write it again with `q7x2-deploy plan --json` and review it"))
    return plan, inv


def run(args: argparse.Namespace) -> int:
    if args.inventory is not None and (rc := other_scheduler(args, "up")) is not None:
        return rc  # a plan file (--plan alone) is always an SSH plan
    console = Console()
    plan, inv = _plan_and_inventory(args)
    if not plan.job_spec.job.checkpoint.keep_optimizer:
        print("q7x2-deploy: warning: job.checkpoint.keep_optimizer is false: checkpoints hold no optimizer or RNG "
              "state, so a resume restarts the optimizer and will not continue exactly", flush=True)
    factory = ssh_factory(args.accept_new_host_keys, args.ssh_config)
    if inv is None:
        print(f"q7x2-deploy: running {args.plan} as written; automatic recovery is off without the inventory",
              flush=True)
    with cluster_from_args(args, factory=factory, plan=plan) as cluster:
        job = cluster.plan.job_name
        sink = LogSink(job)
        try:
            rc = up(cluster, sink, detach=args.detach, quiet_warning_s=args.quiet_warning * 60,
                    hooks=UpHooks(on_preflight=lambda r: print_preflight(r, console)),
                    inventory=inv, factory=factory)
        finally:
            sink.close()
    if args.detach and rc == 0 and inv is not None and inv.job.recovery.max_restarts > 0:
        # The train phase runs unwatched from here: a supervisor process watches and recovers it.
        extra = ["--quiet-warning", f"{args.quiet_warning:g}",
                 *(["--accept-new-host-keys"] if args.accept_new_host_keys else []),
                 *(["--ssh-config", os.path.abspath(args.ssh_config)] if args.ssh_config else []),
                 *(["--scheduler", args.scheduler] if args.scheduler else [])]
        info = start_supervisor(job, args.inventory, extra)
        print(f"q7x2-deploy: supervisor (pid {info['pid']}) watches and recovers job {job}; "
              f"its output: {info['log']}; `q7x2-deploy down` stops it", flush=True)
    return rc
