"""`q7x2-deploy down INVENTORY`: remove the job's containers on every host. Idempotent."""

from __future__ import annotations

import argparse

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.containers import remove_job
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.session import add_host_key_argument, add_inventory_argument, cluster_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("down", help="stop and remove the job's containers on every host")
    add_inventory_argument(p)
    add_host_key_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with cluster_from_args(args) as cluster:
        job = cluster.plan.job_name
        outcomes = for_each(cluster.hosts, lambda h: remove_job(cluster.transport(h), job), key=lambda h: h.name)
    for name, o in outcomes.items():
        if o.ok:
            print(f"{name}: removed {o.value} container(s) of job {job}")
    failed = {n: o.error for n, o in outcomes.items() if o.error is not None}
    if failed:
        n, e = next(iter(failed.items()))
        raise DeployError(f"down incomplete on {', '.join(failed)}: {e}; rerun `down` once the host answers")
    return 0
