"""Does `check` scale with the number of hosts? Preflight of 1 host vs 8 hosts of a sandbox.

Brings up its own 8-host sandbox (name q7x2b, subnet 10.213.10.0/24) unless --reuse names one
that is up, runs the same preflight `q7x2-deploy check` runs (fresh SSH connections each time,
host keys verified) against the first host alone and against all 8, and prints
time(8)/time(1). Target: <= 1.5, i.e. hosts are checked in parallel, not one after another.

For scale it also times the floor: one bare `true` over a fresh SSH connection per host. All
sandbox hosts share this machine's cores, and every SSH command runs the login shell's rc files
(root's ~/.bashrc); when those are slow (pyenv init costs ~0.2 s of CPU), 8 hosts on 2 cores
are CPU-bound and the floor's ratio is already well above 1 — the check cannot do better than it.

    python bench/fanout.py [--reuse NAME] [--keep] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from q7x2_deploy.executor.cluster import open_cluster, ssh_factory
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.preflight import preflight
from q7x2_deploy.inventory import load_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.sandbox import cluster as sandbox
from q7x2_deploy.sandbox.config import SandboxConfig

HOSTS = 8


def _inventory(base: Path, dest: Path, hosts: int) -> Path:
    data = yaml.safe_load(base.read_text())
    data["hosts"] = data["hosts"][:hosts]
    data["master"]["host"] = data["hosts"][0]["name"]
    data["job"]["name"] = "bench-fanout"
    data["job"]["model"] = {"preset": "qwen2.5-7b"}  # check reads no model files
    data["master"]["port"] = 6299
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def _time_check(inventory: Path) -> float:
    plan = build_plan(load_inventory(inventory))
    t0 = time.perf_counter()
    with open_cluster(plan, ssh_factory()) as cluster:
        reports = preflight(cluster)
    elapsed = time.perf_counter() - t0
    broken = [f"{r.host}: {c.name}: {c.detail}" for r in reports for c in r.failures if c.name in ("ssh", "engine")]
    if broken:
        raise SystemExit(f"fanout: hosts not usable: {'; '.join(broken)}")
    return elapsed


def _time_true(inventory: Path) -> float:
    plan = build_plan(load_inventory(inventory))
    t0 = time.perf_counter()
    with open_cluster(plan, ssh_factory()) as cluster:
        for_each(cluster.hosts, lambda h: cluster.transport(h).run(["true"], timeout=60), key=lambda h: h.name)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", metavar="NAME", help="use this running sandbox (needs >= 8 hosts)")
    ap.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    cfg = sandbox.config_for(args.reuse, None) if args.reuse else SandboxConfig(name="q7x2b", subnet="10.213.10.0/24")
    owned = args.reuse is None
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
            base = Path(st["inventory"])
            one = _inventory(base, Path(tmp) / "one.yaml", 1)
            many = _inventory(base, Path(tmp) / "many.yaml", HOSTS)
            _time_check(one), _time_check(many)  # warm-up: page cache, sshd, engines
            t1 = [_time_check(one) for _ in range(args.repeat)]
            t8 = [_time_check(many) for _ in range(args.repeat)]
            f1 = [_time_true(one) for _ in range(args.repeat)]
            f8 = [_time_true(many) for _ in range(args.repeat)]
        finally:
            if owned and not args.keep:
                sandbox.down(cfg, log=lambda _m: None)
    m1, m8 = statistics.median(t1), statistics.median(t8)
    print(f"check, 1 host : median {m1:.3f}s  ({', '.join(f'{x:.2f}' for x in t1)})")
    print(f"check, {HOSTS} hosts: median {m8:.3f}s  ({', '.join(f'{x:.2f}' for x in t8)})")
    print(f"floor (bare `true` over SSH): 1 host {statistics.median(f1):.3f}s, {HOSTS} hosts "
          f"{statistics.median(f8):.3f}s, ratio {statistics.median(f8) / statistics.median(f1):.2f}")
    print(f"time({HOSTS})/time(1) = {m8 / m1:.2f}  (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
