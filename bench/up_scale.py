"""How does `up` grow with hosts? A trivial job on 1, 16 and 64 sandbox hosts, phase by phase.

Brings up its own sandbox (as many hosts as the largest count; name q7x2u, subnet
10.213.12.0/24, both moved by Q7X2_TEST_SLOT as in the tests) unless --reuse names one that is
up. The job is the sandbox's own inventory (every host, master, mounts, NIC, ports as
`sandbox up` writes it) with one change: its image is a tiny one made here from the tests'
busybox image plus a `q7x2-runtime` that prints its step's name and exits 0, so every step
(convert and preprocess on rank 0, pretrain on every rank) finishes at once. The plan is the
one `build_plan` gives for that inventory, unchanged; `up` delivers the image itself, over SSH
(`image.distribution: ssh`: the local engine's `docker save` streamed into every host's
`docker load`), and then runs exactly as `q7x2-deploy up` would.

For each size it prints, medians over --repeat interleaved rounds with the image already on
the hosts (each round starts from no container of the job: the previous round's are removed):

- seconds from the start of `up` to: the preflight done (every host checked), preflight, image
  and job files ready, every prepare container started, the prepare barrier (every prepare
  step exited 0: the train phase begins), every train container started (= running: `docker
  run -d` returned for each), and `up` returning after every pretrain exited 0;
- the deployer's CPU over the whole `up` (getrusage(RUSAGE_SELF): this process, every thread);
- the CPU bound: the whole machine's busy CPU during the `up` (/proc/stat) over its cores. The
  sandbox hosts' engines, sshds and containers share this machine's cores, so no schedule
  finishes sooner, and wall / bound near 1 means `up` waits on nothing but that CPU;
- each wall time against 1 host's.

Before the timed rounds one round per size runs with the image removed from its hosts, so
the delivery is measured too (its row: the seconds to "image and job files ready").

    python bench/up_scale.py [--hosts 1,16,64] [--reuse NAME] [--keep] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.scale_sandbox import (  # noqa: E402
    busy_cpu_seconds,
    first_hosts_inventory,
    host_counts,
    own_cpu_seconds,
    scale_arguments,
    scale_sandbox,
)
from tests import isolation  # noqa: E402
from tests.deploy.deploy_fixtures import ensure_test_image  # noqa: E402

from q7x2_deploy.executor.cluster import open_cluster
from q7x2_deploy.executor.fanout import first_error, for_each
from q7x2_deploy.executor.up import UpHooks, up
from q7x2_deploy.plan import build_plan
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.sandbox.config import SandboxConfig
from q7x2_deploy.transport.factory import ssh_factory
from q7x2_deploy.validation import load_inventory

SIZES = (1, 16, 64)
IMAGE = isolation.tag("q7x2-bench/trivial:1")
# Stands in for the runtime: every step says which one it is and succeeds at once.
STAND_IN = '#!/bin/sh\necho "trivial step: $1"\nexit 0\n'
MILESTONES = ("preflight", "ready", "prepare started", "prepare barrier", "train started", "done")


def trivial_image() -> str:
    """The tests' busybox image plus /bin/q7x2-runtime, made offline (create, cp, commit)."""
    base = ensure_test_image()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "q7x2-runtime"
        script.write_text(STAND_IN)
        script.chmod(0o755)
        cid = subprocess.run(["docker", "create", base, "true"], check=True, capture_output=True,
                             text=True).stdout.strip()
        try:
            subprocess.run(["docker", "cp", str(script), f"{cid}:/bin/q7x2-runtime"], check=True, capture_output=True)
            subprocess.run(["docker", "commit", cid, IMAGE], check=True, capture_output=True)
        finally:
            subprocess.run(["docker", "rm", cid], capture_output=True)
    return IMAGE


class TimingSink(LogSink):
    """The real sink (host logs to files, terminal output to /dev/null), with each note's time."""

    def __init__(self, job: str, devnull) -> None:
        super().__init__(job, echo=True, stream=devnull, keep_files=True)
        self.t0 = time.perf_counter()
        self.notes: list[tuple[float, str]] = []

    def note(self, text: str) -> None:
        self.notes.append((time.perf_counter() - self.t0, text))
        super().note(text)


@dataclass
class Round:
    milestones: dict[str, float] = field(default_factory=dict)
    cpu: float = 0.0
    busy: float = 0.0  # the whole machine's busy CPU-seconds meanwhile


def _last(notes: list[tuple[float, str]], hosts: int, match: Callable[[str], bool]) -> float:
    """The time of the last of `hosts` notes that match (NaN if fewer arrived)."""
    times = [t for t, text in notes if match(text)]
    return times[-1] if len(times) >= hosts else float("nan")


def _one_up(inventory: Path) -> Round:
    inv = load_inventory(inventory)
    plan = build_plan(inv)
    factory = ssh_factory()
    n = len(plan.hosts)
    preps = sum(1 for h in plan.hosts for s in h.steps if s.phase == "prepare")
    with open_cluster(plan, factory) as cluster:
        err = first_error(for_each(cluster.hosts, lambda h: cluster.runtime(h).remove_job(plan.job_name),
                                   key=lambda h: h.name))
        if err is not None:
            raise SystemExit(f"up_scale: could not clear the previous round: {err}")
    with open(os.devnull, "w") as devnull, open_cluster(plan, factory) as cluster:
        sink = TimingSink(plan.job_name, devnull)
        marks: dict[str, float] = {}
        c0, b0 = own_cpu_seconds(), busy_cpu_seconds()
        sink.t0 = t0 = time.perf_counter()
        rc = up(cluster, sink, hooks=UpHooks(on_preflight=lambda _r: marks.setdefault("preflight", time.perf_counter() - t0)),
                inventory=inv, factory=factory)
        marks["done"] = time.perf_counter() - t0
        cpu, busy = own_cpu_seconds() - c0, busy_cpu_seconds() - b0
        sink.close()
    if rc != 0:
        raise SystemExit(f"up_scale: up returned {rc} on {n} hosts")
    notes = sink.notes
    marks["ready"] = _last(notes, 1, lambda s: "preflight, image and job files ready" in s)
    marks["prepare started"] = _last(notes, preps, lambda s: s.endswith(")") and (": convert started" in s or ": preprocess started" in s))
    marks["prepare barrier"] = _last(notes, 1, lambda s: s == "q7x2-deploy: phase train")
    marks["train started"] = _last(notes, n, lambda s: ": pretrain started (" in s)
    return Round({k: marks[k] for k in MILESTONES}, cpu, busy)


def _remove_image(cfg: SandboxConfig, inventory: Path) -> None:
    plan = build_plan(load_inventory(inventory))
    with open_cluster(plan, ssh_factory()) as cluster:
        def drop(h) -> None:
            rt = cluster.runtime(h)
            rt.remove_job(plan.job_name)
            if (iid := rt.image_id(IMAGE)) is not None:
                rt.remove_image(iid)
        err = first_error(for_each(cluster.hosts, drop, key=lambda h: h.name))
    if err is not None:
        raise SystemExit(f"up_scale: could not remove the image from the hosts: {err}")


def _table(title: str, rounds: dict[int, list[Round]]) -> None:
    sizes = sorted(rounds)
    med = {n: {k: statistics.median(r.milestones[k] for r in rounds[n]) for k in MILESTONES} for n in sizes}
    cpu = {n: statistics.median(r.cpu for r in rounds[n]) for n in sizes}
    print(title)
    print(f"{'seconds from start to':<44}" + "".join(f"{f'{n} hosts':>11}" for n in sizes)
          + "".join(f"{f'{n}/1':>8}" for n in sizes if n != 1 and 1 in sizes))
    labels = {"preflight": "preflight done (every host checked)",
              "ready": "preflight, image and job files ready",
              "prepare started": "every prepare container started",
              "prepare barrier": "prepare barrier (train phase begins)",
              "train started": "every train container running",
              "done": "up returned (every pretrain exited 0)"}
    for k in MILESTONES:
        row = f"{labels[k]:<44}" + "".join(f"{med[n][k]:>11.2f}" for n in sizes)
        if 1 in sizes:
            row += "".join(f"{med[n][k] / med[1][k]:>8.1f}" for n in sizes if n != 1)
        print(row)
    print(f"{'deployer CPU s (whole up)':<44}" + "".join(f"{cpu[n]:>11.2f}" for n in sizes)
          + ("".join(f"{cpu[n] / cpu[1]:>8.1f}" for n in sizes if n != 1) if 1 in sizes else ""))
    print(f"{'deployer CPU ms per host':<44}" + "".join(f"{cpu[n] / n * 1000:>11.1f}" for n in sizes))
    cores = len(os.sched_getaffinity(0))
    bound = {n: statistics.median(r.busy for r in rounds[n]) / cores for n in sizes}
    print(f"{f'CPU bound s (machine busy CPU / {cores} cores)':<44}" + "".join(f"{bound[n]:>11.2f}" for n in sizes))
    print(f"{'up wall / CPU bound':<44}" + "".join(f"{med[n]['done'] / bound[n]:>11.2f}" for n in sizes))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scale_arguments(ap, sizes=SIZES, repeat=2)
    args = ap.parse_args()
    sizes = host_counts(args)
    total = max(sizes)

    trivial_image()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="q7x2-upscale-") as tmp, \
            scale_sandbox(args, "q7x2u", "10.213.12.0/24", total, Path(tmp)) as cfg:
        os.environ["Q7X2_RUNS_DIR"] = str(Path(tmp) / "runs")  # the rounds' run directories
        repo, tag = IMAGE.rsplit(":", 1)
        invs = {n: first_hosts_inventory(cfg, Path(tmp) / f"h{n}.yaml", total, n, job=f"bench-up-{n}", port=6298,
                                         image={"repository": repo, "tag": tag, "flavor": "cpu", "distribution": "ssh"},
                                         job__recovery={"max_restarts": 0})
                for n in sizes}
        delivery: dict[int, list[Round]] = {}
        for n in sizes:
            _remove_image(cfg, invs[total])
            delivery[n] = [_one_up(invs[n])]
        rounds: dict[int, list[Round]] = {n: [] for n in sizes}
        for _ in range(args.repeat):  # interleaved, so load elsewhere hits every size alike
            for n in sizes:
                rounds[n].append(_one_up(invs[n]))
        plan = build_plan(load_inventory(invs[total]))
        with open_cluster(plan, ssh_factory()) as cluster:
            for n in sizes:
                for_each(cluster.hosts, lambda h, n=n: cluster.runtime(h).remove_job(f"bench-up-{n}"),
                         key=lambda h: h.name)
    load1 = os.getloadavg()
    print(f"-- up of a trivial job ({os.cpu_count()} CPUs; load before {'/'.join(f'{x:.1f}' for x in load0)}, "
          f"after {'/'.join(f'{x:.1f}' for x in load1)})")
    _table("with image delivery (image removed from the hosts first; one round)", delivery)
    _table(f"image already on the hosts (median of {args.repeat} interleaved rounds)", rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
