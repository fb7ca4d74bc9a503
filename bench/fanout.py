"""What does `check` cost the deployer, and how does it grow? 1, 8, 32 and 64 sandbox hosts.

Brings up its own sandbox (as many hosts as the largest count; name q7x2b, subnet
10.213.10.0/24, both moved by Q7X2_TEST_SLOT as in the tests) unless
--reuse names one that is up, and runs the same preflight `q7x2-deploy check` runs (fresh SSH
connections each time, host keys verified) against the first 1, 8, 32 and 64 hosts. For each
size it prints, medians over --repeat interleaved rounds:

- wall time of the check;
- the deployer's own CPU time: this process only (getrusage(RUSAGE_SELF): every thread of it,
  paramiko's included; the hosts' sshd, shells and docker CLIs are other processes), and per host;
- the CPU bound: the busy CPU of the whole machine during the check (/proc/stat) spread over
  its cores, or one host's check alone if longer: no schedule of that work can finish sooner,
  because the sandbox hosts share this machine's cores;
- wall / bound: near 1 means nothing is serialised or waiting.

Targets: the deployer's CPU <= 10 ms per host; wall <= 1.2 x the bound at 64 hosts; nothing
growing faster than linearly with hosts (per-host CPU flat).

With --pin it also repeats the 8-host comparison with the sandbox pinned to fewer cores (the
earlier finding: time(8) follows the CPU bound, time(1) does not move).

    python bench/fanout.py [--hosts 1,8,32,64] [--reuse NAME] [--keep] [--repeat 3] [--pin]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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

from q7x2_deploy.executor.cluster import open_cluster
from q7x2_deploy.transport.factory import ssh_factory
from q7x2_deploy.executor.preflight import check_host, preflight
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.sandbox.config import SandboxConfig
from q7x2_deploy.sandbox.state import State

def _descendants(roots: set[int]) -> set[int]:
    """Every process under these PIDs (roots included), from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue  # exited while we looked
        children.setdefault(int(rest.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _pin(cfg: SandboxConfig, cpus: set[int]) -> None:
    """Run the sandbox hosts (every thread of every process) and this benchmark on `cpus`.

    Processes started later (an SSH login, the docker CLI) inherit their parent's CPUs.
    """
    st = State.load(cfg.state_file)
    roots = {h.init_pid for h in st.hosts if h.init_pid} if st else set()
    for pid in _descendants(roots) | {os.getpid()}:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except (OSError, ValueError):
                pass  # the thread exited meanwhile


@dataclass
class Sample:
    wall: float
    busy: float  # the whole machine's busy CPU-seconds meanwhile
    own: float  # this process's CPU-seconds meanwhile


def _measure(run: Callable[[], None]) -> Sample:
    c0, o0, t0 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    run()
    return Sample(time.perf_counter() - t0, busy_cpu_seconds() - c0, own_cpu_seconds() - o0)


def _check(inventory: Path, *, serial: bool = False) -> Callable[[], None]:
    plan = build_plan(load_inventory(inventory))

    def run() -> None:
        with open_cluster(plan, ssh_factory()) as cluster:
            if serial:  # what checking hosts one after another would cost
                reports = [check_host(cluster, h) for h in cluster.hosts]
            else:
                reports = preflight(cluster)
        broken = [f"{r.host}: {c.name}: {c.detail}" for r in reports for c in r.failures
                  if c.name in ("ssh", "engine")]
        if broken:
            raise SystemExit(f"fanout: hosts not usable: {'; '.join(broken)}")

    return run


def _rounds(runs: dict[str, Callable[[], None]], repeat: int) -> list[dict[str, Sample]]:
    for run in runs.values():  # warm-up: page cache, sshd, engines
        run()
    # Interleaved rounds, so a burst of load elsewhere hits every series alike.
    return [{k: _measure(run) for k, run in runs.items()} for _ in range(repeat)]


def _median(rounds: list[dict[str, Sample]], key: str, attr: str) -> float:
    return statistics.median(getattr(r[key], attr) for r in rounds)


def _report(rounds: list[dict[str, Sample]], sizes: list[int], cores: int) -> dict[int, float]:
    one = _median(rounds, "1", "wall")
    print(f"{'hosts':>5} {'wall s':>8} {'deployer CPU s':>15} {'per host ms':>12} {'machine CPU s':>14} "
          f"{'bound s':>8} {'wall/bound':>10}")
    ratio = {}
    for n in sizes:
        wall, own, busy = (_median(rounds, str(n), a) for a in ("wall", "own", "busy"))
        bound = max(one, busy / cores)
        ratio[n] = wall / bound
        print(f"{n:>5} {wall:>8.3f} {own:>15.3f} {own / n * 1000:>12.1f} {busy:>14.2f} {bound:>8.3f} {wall / bound:>10.2f}")
    walls = "; ".join(f"{n}: " + ", ".join(f"{r[str(n)].wall:.2f}" for r in rounds) for n in sizes)
    print(f"every round's wall (s): {walls}")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scale_arguments(ap, sizes=(1, 8, 32, 64), repeat=3)
    ap.add_argument("--pin", action="store_true", help="also compare 1 and 8 hosts on fewer cores")
    args = ap.parse_args()
    sizes = host_counts(args)
    total = max(sizes)

    all_cpus = os.sched_getaffinity(0)
    cores = len(all_cpus)
    pinned: dict[int, list[dict[str, Sample]]] = {}
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="q7x2-fanout-") as tmp, \
            scale_sandbox(args, "q7x2b", "10.213.10.0/24", total, Path(tmp)) as cfg:
        try:
            runs = {str(n): _check(first_hosts_inventory(cfg, Path(tmp) / f"h{n}.yaml", total, n,
                                                         job="bench-fanout", port=6299)) for n in sizes}
            rounds = _rounds(runs, args.repeat)
            if args.pin and 1 in sizes and 8 in sizes:
                pair = {"1": runs["1"], "8": runs["8"]}
                for n in sorted({max(1, cores // 2), 1}, reverse=True):
                    _pin(cfg, set(sorted(all_cpus)[:n]))
                    pinned[n] = _rounds(pair, args.repeat)
        finally:
            _pin(cfg, all_cpus)

    load1 = os.getloadavg()
    print(f"-- check on {cores} core(s), median of {args.repeat} interleaved rounds; machine load "
          f"(os.getloadavg) before {'/'.join(f'{x:.1f}' for x in load0)}, after {'/'.join(f'{x:.1f}' for x in load1)}")
    ratio = _report(rounds, sizes, cores)
    for n, r in sorted(pinned.items()):
        print(f"-- 1 and 8 hosts, sandbox and deployer pinned to {n} core(s)")
        _report(r, [1, 8], n)
    per_host = {n: _median(rounds, str(n), "own") / n * 1000 for n in sizes}
    ok = max(per_host.values()) <= 10 and ratio[total] <= 1.2
    print(f"deployer CPU per host: max {max(per_host.values()):.1f} ms (target <= 10); "
          f"wall/bound at {total} hosts {ratio[total]:.2f} (target <= 1.2)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
