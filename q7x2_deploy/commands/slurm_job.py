"""What `up`, `logs`, `status` and `down` do with scheduler kind slurm (the commands dispatch here)."""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console
from rich.table import Table

from q7x2_deploy.backends.slurm import job as sj
from q7x2_deploy.backends.slurm.script import SlurmJob, build_slurm_job, render_sbatch
from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.metrics import last_progress
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.commands.table import compact_table, print_table
from q7x2_deploy.inventory import Inventory
from q7x2_deploy.transport.base import Transport


def _say(text: str) -> None:
    print(f"q7x2-deploy: {text}", flush=True)


def _job_id(t: Transport, job: SlurmJob) -> str | None:
    """The job's Slurm id: the one queued or running, else the last one `up` submitted."""
    active = sj.active_job_ids(t, job)
    if active:
        return active[-1]
    record = sj.load_record(job.job_name)
    return record.get("job_id") if record else None


def _follow(t: Transport, job: SlurmJob, job_id: str, sink: LogSink) -> sj.JobState:
    """Stream the output file from the moment the job has nodes until it has ended."""
    follower = sj.OutputFollower(t, job.output_file(job_id), sink.line)
    last_state = ""
    state = sj.job_state(t, job_id)
    while True:
        if state.state != last_state:
            where = f" on {', '.join(state.nodes)}" if state.nodes and state.state != "PENDING" else ""
            why = f" ({state.reason})" if state.reason and state.state == "PENDING" else ""
            _say(f"Slurm job {job_id}: {state.state}{where}{why}")
            last_state = state.state
        if state.nodes and state.state == "RUNNING":
            follower.nodes = state.nodes  # a requeued job may run on other nodes
        if state.state != "PENDING" and follower._thread is None and state.state != "UNKNOWN":
            follower.nodes = state.nodes
            follower.start(follow=True)
        if not state.active:
            break
        time.sleep(sj.POLL_S)
        state = sj.job_state(t, job_id)
    if follower._thread is None and state.nodes:  # ended between two polls: read what it wrote
        follower.nodes = state.nodes
        follower.start(follow=True)
    follower.stop()
    state.reason = sj.failure_summary(follower.lines)
    return state


def up(inv: Inventory, args: argparse.Namespace) -> int:
    job = build_slurm_job(inv)
    script = render_sbatch(inv, job)
    t = sj.login_transport(inv, args.accept_new_host_keys)
    try:
        job_id = sj.submit(t, job, script)
        sj.save_record(job, job_id, t.host)
        _say(f"submitted job {job.job_name} to Slurm on {t.host}: Slurm job {job_id} "
             f"({job.nodes} node(s), output {job.output_file(job_id)})")
        if args.detach:
            _say("detached: follow it with `logs -f`, see it with `status`, stop it with `down`")
            return 0
        sink = LogSink(job.job_name)
        try:
            state = _follow(t, job, job_id, sink)
        except KeyboardInterrupt:
            _say(f"stopped following; Slurm job {job_id} keeps running (`logs -f`, `status`, `down`)")
            return 130
        finally:
            sink.close()
    finally:
        t.close()
    if state.state == "COMPLETED" and not state.exit_code:
        _say(f"Slurm job {job_id} COMPLETED on {', '.join(state.nodes)}")
        return 0
    detail = f": {state.reason}" if state.reason else ""
    raise DeployError(f"Slurm job {job_id} ended {state.state} (exit status {state.exit_code}){detail}; "
                      f"the whole output is in {job.output_file(job_id)} on {inv.slurm().login}")


def logs(inv: Inventory, args: argparse.Namespace) -> int:
    job = build_slurm_job(inv)
    t = sj.login_transport(inv, args.accept_new_host_keys)
    sink = LogSink(job.job_name, keep_files=True, file_mode="w")
    try:
        job_id = _job_id(t, job)
        if job_id is None:
            raise DeployError(f"no Slurm job of {job.job_name} is known: nothing queued or running as "
                              f"{job.slurm_name}, and `up` has not submitted one from this directory")
        state = sj.job_state(t, job_id)
        wanted = set(args.host or [])
        follower = sj.OutputFollower(t, job.output_file(job_id),
                                     lambda h, r, text: sink.line(h, r, text) if not wanted or h in wanted else None)
        follower.nodes = state.nodes
        if args.follow and state.active:
            follower.start(follow=True)
            while sj.job_state(t, job_id).active:
                time.sleep(sj.POLL_S)
            follower.stop()
        else:
            follower.start(follow=False)
    finally:
        sink.close()
        t.close()
    return 0


def status(inv: Inventory, args: argparse.Namespace) -> int:
    job = build_slurm_job(inv)
    t = sj.login_transport(inv, args.accept_new_host_keys)
    try:
        job_id = _job_id(t, job)
        state = sj.job_state(t, job_id) if job_id else None
        per_node: dict[str, list[str]] = {}
        if state is not None and state.nodes:
            follower = sj.OutputFollower(t, job.output_file(job_id or ""),
                                         lambda h, r, text: per_node.setdefault(h, []).append(text))
            follower.nodes = state.nodes
            follower.start(follow=False)
    finally:
        t.close()
    rows = []
    for rank, node in enumerate(state.nodes if state else []):
        p = last_progress(per_node.get(node, []))
        rows.append({"host": node, "rank": rank, "iteration": p.iteration if p else None,
                     "train_iters": p.train_iters if p else None, "loss": p.lm_loss if p else None,
                     "last_line": per_node[node][-1] if per_node.get(node) else None})
    if args.json:
        print(json.dumps({"job": job.job_name, "scheduler": "slurm", "slurm": state.to_dict() if state else None,
                          "nodes": rows}, indent=2))
        return 0
    console = Console()
    if state is None:
        console.print(f"job {job.job_name}: no Slurm job queued, running or submitted from here", markup=False)
        return 0
    console.print(f"job {job.job_name}: Slurm job {state.job_id} {state.state}"
                  + (f", exit status {state.exit_code}" if state.exit_code is not None and not state.active else "")
                  + (f", run time {state.elapsed}" if state.elapsed else ""), markup=False)
    table: Table = compact_table(f"job {job.job_name} on Slurm")
    for col in ("host", "rank", "iteration", "loss", "last line"):
        table.add_column(col, no_wrap=col != "last line")
    for r in rows:
        it = f"{r['iteration']}/{r['train_iters']}" if r["iteration"] is not None else "-"
        loss = f"{r['loss']:.4f}" if isinstance(r["loss"], float) else "-"
        table.add_row(str(r["host"]), str(r["rank"]), it, loss, str(r["last_line"] or "-")[:80])
    if rows:
        print_table(console, table)
    return 0


def down(inv: Inventory, args: argparse.Namespace) -> int:
    job = build_slurm_job(inv)
    t = sj.login_transport(inv, args.accept_new_host_keys)
    try:
        ids = sj.active_job_ids(t, job)
        record = sj.load_record(job.job_name)
        known = sorted({*ids, *([record["job_id"]] if record and record.get("job_id") else [])})
        if ids:
            t.check(["scancel", *ids])
            _say(f"cancelled Slurm job(s) {', '.join(ids)}")
        left = sj.wait_until_gone(t, ids)
        if left:
            raise DeployError(f"Slurm job(s) {', '.join(left)} still running 60 s after scancel; run `down` again")
        nodes: list[str] = []
        for job_id in known:
            nodes += [n for n in sj.job_state(t, job_id).nodes if n not in nodes]
    finally:
        t.close()
    # Slurm forgets ended jobs (MinJobAge) where no accounting is kept: sweep every listed host too.
    nodes += [h.name for h in inv.hosts if h.name not in nodes]
    failed = []
    for node in nodes:
        nt = sj.node_transport(inv, node, args.accept_new_host_keys)
        try:
            n = sj.sweep_node(nt, job.job_name)
            print(f"{node}: removed {n} container(s) of job {job.job_name}")
        except DeployError as e:
            failed.append(f"{node}: {e}")
        finally:
            nt.close()
    if failed:
        raise DeployError(f"down incomplete: {failed[0]}; rerun `down` once the node answers")
    return 0
