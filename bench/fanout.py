"""Does `check` scale with the number of hosts? Preflight of 1 host vs 8 hosts of a sandbox.

Brings up its own 8-host sandbox (name q7x2b, subnet 10.213.10.0/24) unless --reuse names one
that is up, runs the same preflight `q7x2-deploy check` runs (fresh SSH connections each time,
host keys verified) against the first host alone, against all 8 at once, and against all 8 one
after another, and prints time(8)/time(1). Target: <= 1.5, i.e. hosts are checked in parallel,
not one after another.

What the ratio can reach depends on the machine: a check is CPU work on the host (sshd's
login, the shell, the docker CLI) plus a little on the operator's side, and sandbox hosts share
this machine's cores. So the benchmark also measures the CPU one host's check costs (all
processes, from /proc/stat) and prints the least time 8 checks can take on this machine's cores
however they are scheduled; time(8) near that bound means nothing is serialised. The floor line
does the same for one bare `true` over a fresh SSH connection per host. Then it pins the
sandbox and itself to fewer cores (half, then one) and measures again: time(1) stays put while
time(8) follows the CPU bound, which is what checks that only share the CPU (and do not wait on
each other) do.

    python bench/fanout.py [--reuse NAME] [--keep] [--repeat 5]
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

import yaml

from q7x2_deploy.executor.cluster import open_cluster, ssh_factory
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.preflight import check_host, preflight
from q7x2_deploy.inventory import load_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.sandbox import cluster as sandbox
from q7x2_deploy.sandbox import inventory_file
from q7x2_deploy.sandbox.config import SandboxConfig
from q7x2_deploy.sandbox.state import State

HOSTS = 8


def _inventory(cfg: SandboxConfig, dest: Path, hosts: int) -> Path:
    data = inventory_file.build(cfg, HOSTS)
    data["hosts"] = data["hosts"][:hosts]
    data["master"]["host"] = data["hosts"][0]["name"]
    data["job"]["name"] = "bench-fanout"
    data["job"]["model"] = {"preset": "qwen2.5-7b"}  # check reads no model files
    data["master"]["port"] = 6299
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def _busy_cpu_seconds() -> float:
    """CPU time every process on the machine has used so far (user, system, irq, softirq)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, *_ = map(int, f.readline().split()[1:])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    wall: float
    cpu: float


def _measure(run: Callable[[], None]) -> Sample:
    c0, t0 = _busy_cpu_seconds(), time.perf_counter()
    run()
    return Sample(time.perf_counter() - t0, _busy_cpu_seconds() - c0)


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


def _bare_true(inventory: Path) -> Callable[[], None]:
    plan = build_plan(load_inventory(inventory))

    def run() -> None:
        with open_cluster(plan, ssh_factory()) as cluster:
            for_each(cluster.hosts, lambda h: cluster.transport(h).run(["true"], timeout=60),
                     key=lambda h: h.name)

    return run


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


def _rounds(runs: dict[str, Callable[[], None]], repeat: int) -> list[dict[str, Sample]]:
    for run in runs.values():  # warm-up: page cache, sshd, engines
        run()
    # Interleaved rounds, so a burst of load elsewhere hits every series alike.
    return [{k: _measure(run) for k, run in runs.items()} for _ in range(repeat)]


def _report(rounds: list[dict[str, Sample]], cores: int) -> tuple[float, float, float]:
    """Prints one core count's figures; returns time(1), time(8) and the CPU bound."""

    def med(key: str, attr: str = "wall") -> float:
        return statistics.median(getattr(r[key], attr) for r in rounds)

    def walls(key: str) -> str:
        return ", ".join(f"{r[key].wall:.3f}" for r in rounds)

    # Busy CPU of the whole machine during the 8-host check: no schedule can finish sooner
    # than that work spread over the cores, nor sooner than one host's check alone.
    cpu8 = med("many", "cpu")
    bound8 = max(med("one"), cpu8 / cores)
    m1, m8, ms = med("one"), med("many"), med("serial")
    print(f"-- sandbox and deployer on {cores} core(s)")
    print(f"check, 1 host                 : median {m1:.3f}s  ({walls('one')})")
    print(f"check, {HOSTS} hosts at once        : median {m8:.3f}s  ({walls('many')})")
    print(f"check, {HOSTS} hosts one by one     : median {ms:.3f}s  ({walls('serial')})  "
          f"-> at once is {ms / m8:.1f}x faster")
    print(f"CPU per host check (all processes): {cpu8 / HOSTS * 1000:.0f} ms; {HOSTS} hosts on {cores} "
          f"core(s) cannot finish in less than {bound8:.3f}s; at once took {m8 / bound8:.2f}x that bound")
    print(f"floor (bare `true` over fresh SSH): 1 host {med('true1'):.3f}s, {HOSTS} hosts "
          f"{med('true8'):.3f}s, ratio {med('true8') / med('true1'):.2f}; CPU per host "
          f"{med('true8', 'cpu') / HOSTS * 1000:.0f} ms")
    print(f"time({HOSTS})/time(1) = {m8 / m1:.2f}  (target <= 1.5)")
    return m1, m8, bound8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", metavar="NAME", help="use this running sandbox (needs >= 8 hosts)")
    ap.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    cfg = sandbox.config_for(args.reuse, None) if args.reuse else SandboxConfig(name="q7x2b", subnet="10.213.10.0/24")
    owned = args.reuse is None
    all_cpus = os.sched_getaffinity(0)
    # Every core this process may use, then half of them, down to one: how the times move
    # with the cores shows whether the checks wait on each other or only on the CPU.
    core_counts = sorted({len(all_cpus), max(1, len(all_cpus) // 2), 1}, reverse=True)
    results: dict[int, list[dict[str, Sample]]] = {}
    with tempfile.TemporaryDirectory(prefix="q7x2-fanout-") as tmp:
        try:
            if owned:
                t0 = time.monotonic()
                sandbox.up(cfg, HOSTS, inventory=Path(tmp) / "inventory.yaml", with_base_image=False,
                           with_sample=False, log=lambda _m: None)
                print(f"sandbox {cfg.name}: {HOSTS} hosts up in {time.monotonic() - t0:.0f}s", file=sys.stderr)
            st = sandbox.status(cfg)
            if len(st["hosts"]) < HOSTS:
                raise SystemExit(f"fanout: sandbox {cfg.name} has {len(st['hosts'])} hosts, need {HOSTS}")
            one = _inventory(cfg, Path(tmp) / "one.yaml", 1)
            many = _inventory(cfg, Path(tmp) / "many.yaml", HOSTS)
            runs = {
                "one": _check(one), "many": _check(many), "serial": _check(many, serial=True),
                "true1": _bare_true(one), "true8": _bare_true(many),
            }
            for n in core_counts:
                _pin(cfg, set(sorted(all_cpus)[:n]))
                results[n] = _rounds(runs, args.repeat)
        finally:
            _pin(cfg, all_cpus)
            if owned and not args.keep:
                sandbox.down(cfg, log=lambda _m: None)

    figures = {n: _report(rounds, n) for n, rounds in results.items()}
    if len(figures) > 1:
        print("-- scaling: time(8) follows the CPU bound, time(1) does not move")
        for n, (m1, m8, bound8) in sorted(figures.items()):
            print(f"{n} core(s): time(1) {m1:.3f}s  time(8) {m8:.3f}s  bound {bound8:.3f}s  "
                  f"time(8)/time(1) {m8 / m1:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
