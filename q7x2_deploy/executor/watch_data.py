"""One snapshot of a running job for `watch`: every host's status, NPU figures, restarts, timing.

A refresh costs per host the status commands (container list + one log tail) and, on hosts that
have npu-smi, one `npu-smi info`; a host found without npu-smi is not asked again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.npu_usage import USAGE_ARGV, HostUsage, parse_npu_usage, summarize
from q7x2_deploy.runs.rundir import DEPLOYER_LOG, read_events, run_dir
from q7x2_deploy.executor.status import HostStatus, job_status


@dataclass
class Snapshot:
    taken_at: float
    hosts: list[HostStatus]
    usage: dict[str, HostUsage | None]
    events: list[dict[str, object]]
    started_at: float | None  # when this attempt began (the deployer's first line), if known
    seq_length: int
    global_batch_size: int
    losses: list[float] = field(default_factory=list)  # from the host printing iterations

    @property
    def phase(self) -> str:
        phases = {h.phase for h in self.hosts if h.state == "running"}
        return "train" if "train" in phases else ("prepare" if "prepare" in phases else
                                                  ("finished" if self.hosts and all(h.state == "exited" and h.exit_code == 0 for h in self.hosts) else "-"))

    @property
    def progress_host(self) -> HostStatus | None:
        with_progress = [h for h in self.hosts if h.progress is not None]
        return max(with_progress, key=lambda h: h.progress.iteration) if with_progress else None  # type: ignore[union-attr]

    def tokens_per_s(self) -> float | None:
        h = self.progress_host
        if h is None or not h.progress or not h.progress.ms_per_iteration:
            return None
        return self.global_batch_size * self.seq_length / (h.progress.ms_per_iteration / 1000.0)

    def eta_s(self) -> float | None:
        h = self.progress_host
        if h is None or not h.progress or not h.progress.ms_per_iteration:
            return None
        return (h.progress.train_iters - h.progress.iteration) * h.progress.ms_per_iteration / 1000.0

    def restarts(self, host: str | None = None) -> int:
        return sum(1 for e in self.events if host is None or e.get("host") == host)


def _attempt_start(job: str) -> float | None:
    try:
        with open(run_dir(job) / DEPLOYER_LOG, encoding="utf-8") as f:
            return float(f.readline().split("\t", 1)[0])
    except (OSError, ValueError):
        return None


def _used_npus(env: dict[str, str]) -> list[int] | None:
    """The NPUs the job's containers see on this host, when the launch environment names them."""
    raw = env.get("ASCEND_RT_VISIBLE_DEVICES", "")
    ids = [x.strip() for x in raw.split(",") if x.strip()]
    return [int(x) for x in ids] if ids and all(x.isdigit() for x in ids) else None


class Watcher:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._no_npu_smi: set[str] = set()

    def _usage(self, host) -> HostUsage | None:
        r = self.cluster.transport(host).run(USAGE_ARGV, timeout=20)
        if r.exit_status == 3:
            self._no_npu_smi.add(host.name)
            return None
        return summarize(parse_npu_usage(r.stdout), _used_npus(host.env))

    def snapshot(self) -> Snapshot:
        plan = self.cluster.plan
        hosts = job_status(self.cluster)
        asked = [h for h in self.cluster.hosts if h.name not in self._no_npu_smi]
        outcomes = for_each(asked, self._usage, key=lambda h: h.name)
        usage = {name: o.value for name, o in outcomes.items()}
        t = plan.job_spec.job.training
        snap = Snapshot(time.time(), hosts, usage, read_events(plan.job_name), _attempt_start(plan.job_name),
                        t.seq_length, t.global_batch_size)
        if (h := snap.progress_host) is not None:
            snap.losses = h.recent_losses
        return snap
