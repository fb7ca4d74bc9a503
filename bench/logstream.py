"""What does following logs cost the deployer? Every sandbox host printing fast, `logs -f`'s path.

Brings up its own sandbox (--hosts hosts, default 16; name q7x2l, subnet 10.213.11.0/24,
both moved by Q7X2_TEST_SLOT as in the tests) unless --reuse names one that is up, loads the
tests' busybox image into every host's engine, and starts on every host a container under the
name and labels of the job's pretrain step, printing consecutive integers at --rate lines per
second (bursts of rate/20 every 50 ms). Then it follows them exactly as `logs -f` does
(`follow_logs` into a `LogSink` writing every host's log file, terminal output to /dev/null)
for --seconds, and prints:

- lines per second received (all hosts), against what the hosts printed meanwhile;
- the deployer's CPU per line: getrusage(RUSAGE_SELF) of this process (every thread: paramiko's
  reader threads, the followers, the sink; the hosts' dockerd, sshd and docker CLI are other
  processes) over the lines received;
- lost or reordered lines: every host's lines must be 0, 1, 2, ... with nothing missing or out
  of order, up to the last line received (checked as they arrive);
- memory: this process's RSS every --sample seconds, first and last quarter compared;
- the machine's load (os.getloadavg) before and after.

Targets: CPU per line <= 50 us; no line lost or reordered; memory flat.

    python bench/logstream.py [--hosts 16] [--rate 2000] [--seconds 60] [--reuse NAME] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import isolation  # noqa: E402
from tests.deploy.deploy_fixtures import ensure_test_image  # noqa: E402

from q7x2_deploy.executor.cluster import open_cluster
from q7x2_deploy.transport.factory import ssh_factory
from q7x2_deploy.executor.fanout import first_error, for_each
from q7x2_deploy.executor.logs import follow_logs
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.runs.rundir import run_dir
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.sandbox import cluster as sandbox
from q7x2_deploy.sandbox import inventory_file
from q7x2_deploy.sandbox.config import SandboxConfig

JOB = "bench-logstream"


def _inventory(cfg: SandboxConfig, dest: Path, hosts: int) -> Path:
    data = inventory_file.build(cfg, hosts)
    data["job"]["name"] = JOB
    data["job"]["model"] = {"preset": "qwen2.5-7b"}
    data["job"]["training"]["global_batch_size"] = 2 * hosts
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def _printer(rate: int) -> str:
    """Consecutive integers, rate/20 every 50 ms: about `rate` lines per second."""
    burst = max(1, rate // 20)
    return f'i=0; while :; do seq $i $((i+{burst - 1})); i=$((i+{burst})); sleep 0.05; done'


class CheckingSink(LogSink):
    """The real sink, plus a check that every host's lines arrive as 0, 1, 2, ..."""

    def __init__(self, job: str, devnull) -> None:
        super().__init__(job, echo=True, stream=devnull, keep_files=True, file_mode="w")
        self.count: dict[str, int] = {}
        self.next: dict[str, int] = {}
        self.bad: dict[str, str] = {}
        self.notes: list[str] = []

    def line(self, host: str, rank: int | str, text: str) -> None:
        super().line(host, rank, text)
        want = self.next.get(host, 0)
        if text.strip() != str(want) and host not in self.bad:
            self.bad[host] = f"expected {want}, got {text[:40]!r}"
        self.next[host] = want + 1
        self.count[host] = self.count.get(host, 0) + 1

    def note(self, text: str) -> None:
        self.notes.append(text)
        super().note(text)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--rate", type=int, default=2000, help="lines per second each host prints")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to follow")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument("--reuse", metavar="NAME", help="use this running sandbox")
    ap.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    args = ap.parse_args()

    name, subnet = isolation.sandbox("q7x2l", "10.213.11.0/24")
    cfg = sandbox.config_for(args.reuse, None) if args.reuse else SandboxConfig(name=name, subnet=subnet)
    owned = args.reuse is None
    image = ensure_test_image()
    archive = subprocess.run(["docker", "save", image], check=True, capture_output=True).stdout
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="q7x2-logstream-") as tmp:
        try:
            if owned:
                t0 = time.monotonic()
                sandbox.up(cfg, args.hosts, inventory=Path(tmp) / "inventory.yaml", with_base_image=False,
                           with_sample=False, log=lambda _m: None)
                print(f"sandbox {cfg.name}: {args.hosts} hosts up in {time.monotonic() - t0:.0f}s", file=sys.stderr)
            plan = build_plan(load_inventory(_inventory(cfg, Path(tmp) / "inv.yaml", args.hosts)))
            with open_cluster(plan, ssh_factory()) as cluster:
                def prepare(host) -> None:
                    rt = cluster.runtime(host)
                    rt.remove_job(JOB)
                    if rt.image_id(image) is None:
                        rt.load([archive])
                    step = next(s for s in host.steps if s.name == "pretrain")
                    labels = [x for k, v in step.labels.items() for x in ("--label", f"{k}={v}")]
                    cluster.transport(host).check(["docker", "run", "-d", "--network", "none", "--name", step.container_name,
                                                   *labels, image, "sh", "-c", _printer(args.rate)], timeout=120)

                err = first_error(for_each(cluster.hosts, prepare, key=lambda h: h.name))
                if err is not None:
                    raise SystemExit(f"logstream: could not start the printers: {err}")
                result = _follow(cluster, args)
                for_each(cluster.hosts, lambda h: cluster.runtime(h).remove_job(JOB), key=lambda h: h.name)
        finally:
            if owned and not args.keep:
                sandbox.down(cfg, log=lambda _m: None)
            shutil.rmtree(run_dir(JOB), ignore_errors=True)
    load1 = os.getloadavg()
    lines, wall, cpu, rss, sink = result
    print(f"-- {args.hosts} hosts, each printing ~{args.rate:,} lines/s, followed for {wall:.1f} s "
          f"({os.cpu_count()} CPUs; load before {'/'.join(f'{x:.1f}' for x in load0)}, "
          f"after {'/'.join(f'{x:.1f}' for x in load1)})")
    print(f"lines received: {lines:,} = {lines / wall:,.0f} lines/s (the hosts were asked for {args.hosts * args.rate:,}/s); "
          f"per host min {min(sink.count.values(), default=0):,}, "
          f"max {max(sink.count.values(), default=0):,}")
    print(f"deployer CPU: {cpu:.2f} s = {cpu / max(lines, 1) * 1e6:.1f} us per line (target <= 50)")
    quarter = max(1, len(rss) // 4)
    first, last = rss[:quarter], rss[-quarter:]
    print(f"RSS MiB every {args.sample:g}s: {', '.join(f'{x:.0f}' for x in rss)}; "
          f"first quarter max {max(first):.0f}, last quarter max {max(last):.0f}")
    lost = {h: r for h, r in sink.bad.items()}
    silent = [h.name for h in plan.hosts if sink.count.get(h.name, 0) == 0]
    print(f"lost or reordered: {'none' if not lost else lost}; hosts with no line: {silent or 'none'}; "
          f"notes: {sink.notes or 'none'}")
    ok = not lost and not silent and cpu / max(lines, 1) <= 50e-6
    return 0 if ok else 1


def _follow(cluster, args):
    devnull = open(os.devnull, "w")
    sink = CheckingSink(JOB, devnull)
    stop = threading.Event()
    follower = threading.Thread(target=follow_logs, args=(cluster, sink), kwargs={"stop": stop}, daemon=True)
    rss: list[float] = []
    # Let every follower connect and catch up with what was printed before it started.
    follower.start()
    deadline = time.monotonic() + 30
    while len(sink.count) < len(cluster.hosts) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    n0, c0, t0 = sum(sink.count.values()), _own_cpu(), time.perf_counter()
    while (t := time.perf_counter() - t0) < args.seconds:
        time.sleep(min(args.sample, args.seconds - t))
        rss.append(_rss_mib())
    lines, cpu, wall = sum(sink.count.values()) - n0, _own_cpu() - c0, time.perf_counter() - t0
    stop.set()
    follower.join(timeout=30)
    devnull.close()
    return lines, wall, cpu, rss, sink


if __name__ == "__main__":
    sys.exit(main())
