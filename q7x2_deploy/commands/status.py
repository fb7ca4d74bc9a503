"""`q7x2-deploy status INVENTORY [--json]`: per host state, step, time since its last output line,
iteration, loss, throughput; with per-node storage and a replica store, which checkpoint iteration
the store holds whole."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from q7x2_deploy.commands.scheduler_option import add_scheduler_argument, other_scheduler
from q7x2_deploy.commands.session import add_host_key_argument, add_inventory_argument, cluster_from_args
from q7x2_deploy.executor.replica_status import Replication
from q7x2_deploy.executor.status import HostStatus, describe_recovery, job_replication, job_status, quiet_for, recovery_summary
from q7x2_deploy.commands.table import compact_table, print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("status", help="show the job's state and training progress per host")
    add_inventory_argument(p)
    add_scheduler_argument(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_host_key_argument(p)
    p.set_defaults(func=run)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def status_table(job: str, rows: list[HostStatus], replication: Replication | None = None) -> Table:
    table = compact_table(f"job {job}")
    cols = ["host", "rank", "state", "step", "quiet", "iteration", "loss", "ms/it", "TFLOP/s"]
    if replication is not None:
        cols.append("replica")  # the newest iteration this node's files were copied for
    for col in cols:
        table.add_column(col, no_wrap=True, justify="left" if col in ("host", "state", "step") else "right")
    for s in rows:
        p = s.progress
        state = s.state if s.exit_code is None else f"{s.state}({s.exit_code})"
        if not s.reachable:
            state = "unreachable"
        table.add_row(
            s.host, str(s.rank), state, s.step, quiet_for(s.quiet_s),
            f"{p.iteration}/{p.train_iters}" if p else "-",
            _fmt(p.lm_loss if p else None, ".4f"),
            _fmt(p.ms_per_iteration if p else None, ".1f"),
            # Three significant digits: a sandbox model's 0.00313 is not shown as 0.00.
            _fmt(p.tflops_per_device if p else None, ".3g"),
            *([str(s.replica_iteration) if s.replica_iteration is not None else "-"] if replication is not None else []),
        )
    return table


def describe_replication(rep: Replication) -> str:
    if rep.iteration is None:
        where = f"on the {rep.location}" if rep.location.startswith("next host") else rep.location
        return f"replica {where}: no checkpoint iteration fully replicated yet"
    if rep.location.startswith("next host"):
        return (f"replica on the {rep.location}: iteration {rep.iteration} fully replicated "
                "(every file of it on two hosts)")
    return f"replica {rep.location}: iteration {rep.iteration} fully replicated (every file of it, from all nodes)"


def run(args: argparse.Namespace) -> int:
    if (rc := other_scheduler(args, "status")) is not None:
        return rc
    with cluster_from_args(args) as cluster:
        rows = job_status(cluster)
        replication = job_replication(cluster, rows)
        job = cluster.plan.job_name
    recovery = recovery_summary(job)
    if args.json:
        print(json.dumps({"job": job, "hosts": [r.to_dict() for r in rows], "recovery": recovery,
                          "replication": replication.to_dict() if replication else None}, indent=2))
    else:
        console = Console()
        print_table(console, status_table(job, rows, replication))
        if replication is not None:
            console.print(f"  {describe_replication(replication)}", markup=False)
        for r in rows:
            if not r.reachable:
                console.print(f"  {r.host}: {r.error}", style="red", markup=False)
        if not any(r.progress for r in rows):
            console.print("  no training progress yet (Megatron's iteration lines come from the last rank)")
        for line in describe_recovery(recovery):
            console.print(f"  {line}", markup=False)
    return 0 if all(r.reachable for r in rows) else 1
