"""`q7x2-deploy down INVENTORY`: remove the job's containers on every host. Idempotent."""

from __future__ import annotations

import argparse

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.recovery_supervisor import stop_supervisor
from q7x2_deploy.commands.scheduler_option import add_scheduler_argument, other_scheduler
from q7x2_deploy.commands.session import add_host_key_argument, add_inventory_argument, cluster_from_args
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import Plan, build_plan


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("down", help="stop and remove the job's containers on every host")
    add_inventory_argument(p)
    add_scheduler_argument(p)
    add_host_key_argument(p)
    p.set_defaults(func=run)


def _with_spares(plan: Plan, path: str) -> Plan:
    """The plan's hosts and the spares: a spare that took a failed host's rank runs the job's
    containers too, and a failed host that was replaced still has its stopped ones."""
    from dataclasses import replace

    from q7x2_deploy.executor.recovery import spare_host_plans

    return replace(plan, hosts=plan.hosts + spare_host_plans(load_inventory(path, scheduler="ssh"), plan))


def run(args: argparse.Namespace) -> int:
    if (rc := other_scheduler(args, "down")) is not None:
        return rc
    plan = build_plan(load_inventory(args.inventory, scheduler=args.scheduler))
    # First the detached supervisor, or it would restart the job being taken down.
    if (pid := stop_supervisor(plan.job_name)) is not None:
        print(f"stopped the supervisor of job {plan.job_name} (pid {pid})")
    with cluster_from_args(args, plan=_with_spares(plan, args.inventory)) as cluster:
        job = cluster.plan.job_name
        outcomes = for_each(cluster.hosts, lambda h: cluster.runtime(h).remove_job(job), key=lambda h: h.name)
    for name, o in outcomes.items():
        if o.ok:
            print(f"{name}: removed {o.value} container(s) of job {job}")
    failed = {n: o.error for n, o in outcomes.items() if o.error is not None}
    if failed:
        n, e = next(iter(failed.items()))
        raise DeployError(f"down incomplete on {', '.join(failed)}: {e}; rerun `down` once the host answers")
    return 0
