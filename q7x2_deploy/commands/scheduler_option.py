"""`--scheduler KIND` on plan, validate, up, logs, status and down."""

from __future__ import annotations

import argparse

from q7x2_runtime.errors import UserError

from q7x2_deploy.scheduler_spec import SCHEDULER_KINDS


def add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", choices=SCHEDULER_KINDS, default=None,
                        help="where the job runs, instead of the inventory's scheduler.kind (default: ssh)")


def other_scheduler(args: argparse.Namespace, command: str) -> int | None:
    """Run `command` on the backend of a scheduler other than ssh; None for ssh (the caller's own)."""
    from q7x2_deploy.validation import load_inventory

    inv = load_inventory(args.inventory, scheduler=args.scheduler)
    kind = inv.scheduler.kind
    if kind == "ssh":
        return None
    if kind == "slurm":
        from q7x2_deploy.commands import slurm_job as commands

        rc: int = getattr(commands, command)(inv, args)
        return rc
    if kind == "kubernetes":
        from q7x2_deploy.commands import kubernetes_job as kube_commands

        kube_rc: int = getattr(kube_commands, command)(inv, args)
        return kube_rc
    raise UserError(f"{command} --scheduler {kind}: this version runs jobs over ssh, slurm and kubernetes only")
