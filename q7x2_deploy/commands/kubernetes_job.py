"""What `up`, `logs`, `status` and `down` do with scheduler kind kubernetes (the commands dispatch here)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from q7x2_deploy.backends.kubernetes import apply
from q7x2_deploy.backends.kubernetes.manifests import build_manifests
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.inventory import Inventory
from q7x2_runtime.errors import UserError


def _connect(inv: Inventory) -> apply.Apis:
    kube = inv.scheduler.kubernetes
    return apply.connect(kube.kubeconfig if kube is not None else None)


def up(inv: Inventory, args: argparse.Namespace) -> int:
    manifests = build_manifests(inv)
    apis = _connect(inv)
    sink = LogSink(manifests.job_name)
    try:
        return apply.up(apis, manifests, sink, detach=bool(getattr(args, "detach", False)))
    finally:
        sink.close()


def down(inv: Inventory, args: argparse.Namespace) -> int:
    manifests = build_manifests(inv)
    deleted = apply.down(_connect(inv), manifests)
    ns = manifests.target.namespace
    if deleted:
        print(f"deleted from namespace {ns}: {', '.join(deleted)}")
    else:
        print(f"nothing of job {manifests.job_name} in namespace {ns}")
    return 0


def logs(inv: Inventory, args: argparse.Namespace) -> int:
    if getattr(args, "since", None):
        raise UserError("logs --since: not with --scheduler kubernetes yet; `kubectl logs --since` reads one pod's")
    manifests = build_manifests(inv)
    sink = LogSink(manifests.job_name, file_mode="w")  # the whole log each time: replaces the local copy
    try:
        nodes = getattr(args, "host", None) or []
        if apply.stream_logs(_connect(inv), manifests, sink, follow=bool(args.follow), nodes=nodes) == 0:
            where = f" on {', '.join(nodes)}" if nodes else ""
            print(f"job {manifests.job_name} has no pods{where} in namespace {manifests.target.namespace}")
    finally:
        sink.close()
    return 0


def status(inv: Inventory, args: argparse.Namespace) -> int:
    manifests = build_manifests(inv)
    state, pods = apply.job_state(_connect(inv), manifests)
    if getattr(args, "json", False):
        print(json.dumps({"job": manifests.job_name, "namespace": manifests.target.namespace, "state": state,
                          "pods": [{"name": p.name, "node": p.node, "rank": p.rank, "phase": p.phase, "exit_codes": p.exit_codes} for p in pods]},
                         indent=2))  # fmt: skip
        return 0
    console = Console()
    console.print(f"[bold]job[/] {manifests.job_name} ({manifests.training['kind']}, namespace {manifests.target.namespace}): {state}", highlight=False)
    if pods:
        table = Table("pod", "node", "node rank", "phase", "exit codes")
        for p in pods:
            table.add_row(p.name, p.node, p.rank, p.phase, ", ".join(f"{c} {code}" for c, code in p.exit_codes.items()))
        console.print(table)
    return 0
