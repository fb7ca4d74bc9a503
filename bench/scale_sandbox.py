"""What the scale benches (fanout: `check`, up_scale: `up`) share: their command line, a
sandbox of their own (or one that is up), inventories of its first N hosts, and the two CPU
clocks they compare (this process's own, and the whole machine's)."""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from q7x2_deploy.sandbox import cluster as sandbox
from q7x2_deploy.sandbox import inventory_file
from q7x2_deploy.sandbox.config import SandboxConfig
from tests import isolation

def scale_arguments(ap: argparse.ArgumentParser, *, sizes: tuple[int, ...], repeat: int) -> None:
    ap.add_argument("--hosts", default=",".join(map(str, sizes)), help="host counts (max 64)")
    ap.add_argument("--reuse", metavar="NAME", help="use this running sandbox (enough hosts for the largest count)")
    ap.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    ap.add_argument("--repeat", type=int, default=repeat)


def host_counts(args: argparse.Namespace) -> list[int]:
    return sorted({int(x) for x in args.hosts.split(",")})


@contextlib.contextmanager
def scale_sandbox(args: argparse.Namespace, name: str, subnet: str, hosts: int, tmp: Path) -> Iterator[SandboxConfig]:
    """The sandbox named by --reuse, else a new one of `hosts` hosts (name and subnet moved by
    Q7X2_TEST_SLOT, as in the tests) taken down afterwards unless --keep."""
    name, subnet = isolation.sandbox(name, subnet)
    cfg = sandbox.config_for(args.reuse, None) if args.reuse else SandboxConfig(name=name, subnet=subnet)
    owned = args.reuse is None
    try:
        if owned:
            t0 = time.monotonic()
            sandbox.up(cfg, hosts, inventory=tmp / "inventory.yaml", with_base_image=False,
                       with_sample=False, log=lambda _m: None)
            print(f"sandbox {cfg.name}: {hosts} hosts up in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        st = sandbox.status(cfg)
        if len(st["hosts"]) < hosts:
            raise SystemExit(f"sandbox {cfg.name} has {len(st['hosts'])} hosts, the bench needs {hosts}")
        yield cfg
    finally:
        if owned and not args.keep:
            sandbox.down(cfg, log=lambda _m: None)


def first_hosts_inventory(cfg: SandboxConfig, dest: Path, total: int, hosts: int, *, job: str, port: int,
                          **sections: Any) -> Path:
    """The sandbox's inventory cut to its first `hosts` hosts (the first is the master), for a
    job named `job` on master port `port`; `sections` replace top-level sections (image, ...)
    or, as job__KEY, keys of the job."""
    data = inventory_file.build(cfg, total)
    data["hosts"] = data["hosts"][:hosts]
    data["master"] = {"host": data["hosts"][0]["name"], "port": port}
    data["job"]["name"] = job
    data["job"]["model"] = {"preset": "qwen2.5-7b"}  # neither check nor the stand-in steps read model files
    data["job"]["training"]["global_batch_size"] = 2 * hosts
    for key, value in sections.items():
        if key.startswith("job__"):
            data["job"][key.removeprefix("job__")] = value
        else:
            data[key] = value
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def own_cpu_seconds() -> float:
    """CPU time of this process alone (all its threads), not of any other process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def busy_cpu_seconds() -> float:
    """CPU time every process on the machine has used so far (user, system, irq, softirq)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, *_ = map(int, f.readline().split()[1:])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
