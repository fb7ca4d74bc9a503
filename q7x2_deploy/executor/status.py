"""`status`: per host, the job's containers, phase, training progress and when it last spoke.

Megatron prints iteration lines on the last rank only, so the other hosts show no progress;
how long ago their current container last wrote a line is what tells a live host from a hung
one. The age is computed on the host (its engine's timestamps against its own clock), so the
operator's clock does not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from q7x2_deploy.errors import reason_for
from q7x2_deploy.backends.container_runtime import ContainerState
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.metrics import Progress, last_progress, losses
from q7x2_deploy.executor.replica_status import Replication, listing_argv, parse_listing, summarize
from q7x2_deploy.plan import HostPlan
from q7x2_runtime.pretrain.replica import Manifest

LOG_TAIL = 400


@dataclass
class HostStatus:
    host: str
    rank: int
    reachable: bool = True
    error: str = ""
    state: str = "absent"  # the current (latest) step's container state
    step: str = "-"
    phase: str = "-"
    exit_code: int | None = None
    steps: dict[str, str] = field(default_factory=dict)
    progress: Progress | None = None
    quiet_s: float | None = None  # seconds since the current step's container last wrote a line
    # Per-node storage with a replica store: the manifests this host sees, and the newest
    # iteration this host's node copied there (set once every host's view is in).
    replica_seen: list[Manifest] | None = None
    replica_iteration: int | None = None
    last_line: str = ""  # the current container's newest non-empty line
    recent_losses: list[float] = field(default_factory=list)  # lm loss of the iterations in the tail

    def to_dict(self) -> dict[str, object]:
        return {
            "host": self.host, "rank": self.rank, "reachable": self.reachable, "error": self.error,
            "state": self.state, "step": self.step, "phase": self.phase, "exit_code": self.exit_code,
            "steps": self.steps, "progress": self.progress.to_dict() if self.progress else None,
            "quiet_s": self.quiet_s, "replica_iteration": self.replica_iteration,
        }


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$")


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp with up to nanoseconds (Docker's);
    datetime parses at most microseconds, so the fraction is added separately."""
    m = _RFC3339.match(stamp.replace("Z", "+00:00"))
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {stamp!r}")
    base = datetime.fromisoformat(m[1] + (m[3] or "+00:00"))
    return base.timestamp() + (float("0." + m[2]) if m[2] else 0.0)


def quiet_for(seconds: float | None) -> str:
    """How long a running container has printed nothing: 4s, 3m07s, 2h05m."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _describe(c: ContainerState) -> str:
    return c.status if c.status != "exited" else f"exited({c.exit_code})"


def host_status(cluster: Cluster, host: HostPlan) -> HostStatus:
    t = cluster.transport(host)
    rt = cluster.runtime(host)
    st = HostStatus(host.name, host.node_rank)
    found = rt.list_job(cluster.plan.job_name)
    current: ContainerState | None = None
    for step in host.steps:  # plan order: the last one present is the current step
        c = found.get(step.container_name)
        if c is None:
            continue
        st.steps[step.name] = _describe(c)
        current = c
    if current is not None:
        st.state, st.step, st.phase = current.status, current.step, current.phase
        st.exit_code = current.exit_code if current.status == "exited" else None
    if current is not None:
        # The host's clock comes with the lines, so their age needs no clock agreement with us.
        tail = rt.tail(current.name, LOG_TAIL)
        lines, now = tail.lines, tail.host_now
        st.last_line = next((ln.text for ln in reversed(lines) if ln.text.strip()), "")
        if current.step == "pretrain":
            texts = [ln.text for ln in lines]
            st.progress = last_progress(texts)
            st.recent_losses = [loss for _, loss in losses(texts)]
        if current.status == "running" and now is not None:
            newest = max((ln.stamp for ln in lines if ln.stamp), default="")
            if newest:
                st.quiet_s = max(0.0, now - _epoch(newest))
    if (argv := listing_argv(cluster.plan.job_spec)) is not None:
        st.replica_seen = parse_listing(t.run(argv, timeout=60).stdout)
    return st


def job_status(cluster: Cluster) -> list[HostStatus]:
    outcomes = for_each(cluster.hosts, lambda h: host_status(cluster, h), key=lambda h: h.name)
    out = []
    for h in cluster.hosts:
        o = outcomes[h.name]
        out.append(o.value if o.value is not None else
                   HostStatus(h.name, h.node_rank, reachable=False, state="unknown",
                              error=reason_for(o.error, h.name)))
    return out


def recovery_summary(job: str) -> dict[str, object]:
    """From the operator's run directory: restarts so far, the last recovery event, and the
    detached supervisor if one runs."""
    from q7x2_deploy.executor.recovery import restarts_used
    from q7x2_deploy.executor.recovery_supervisor import supervisor_info
    from q7x2_deploy.runs.rundir import read_events

    events = read_events(job)
    sup = supervisor_info(job)
    return {"restarts": restarts_used(events), "last_event": events[-1] if events else None,
            "supervisor": {"pid": sup["pid"], "log": sup.get("log")} if sup else None}


def describe_recovery(summary: dict[str, object]) -> list[str]:
    """The status lines about recovery (none when nothing happened and nothing supervises)."""
    out = []
    sup = summary.get("supervisor")
    if isinstance(sup, dict):
        out.append(f"supervisor: running (pid {sup['pid']}), output in {sup.get('log')}")
    last = summary.get("last_event")
    if isinstance(last, dict):
        what = "gave up" if last.get("gave_up") else "last"
        out.append(f"recovery: {summary['restarts']} restart(s); {what}: {last.get('time')} {last.get('host')} "
                   f"{last.get('cause')}; {last.get('action')}"
                   + (f"; resumed from iteration {last['resume_iteration']}"
                      if last.get("resume_iteration") is not None else ""))
    return out


def job_replication(cluster: Cluster, rows: list[HostStatus]) -> Replication | None:
    """The replica store as every reachable host sees it; sets each row's replica_iteration."""
    if listing_argv(cluster.plan.job_spec) is None:
        return None
    rep = summarize(cluster.plan.job_spec, {r.host: r.replica_seen for r in rows if r.replica_seen is not None},
                    {r.host: r.rank for r in rows})
    for r in rows:
        r.replica_iteration = rep.node_iteration(r.rank)
    return rep
