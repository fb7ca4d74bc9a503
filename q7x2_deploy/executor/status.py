"""`status`: per host, the job's containers, phase and training progress."""

from __future__ import annotations

from dataclasses import dataclass, field

from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.containers import ContainerState, list_job_containers
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.metrics import Progress, last_progress
from q7x2_deploy.plan import HostPlan

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

    def to_dict(self) -> dict[str, object]:
        return {
            "host": self.host, "rank": self.rank, "reachable": self.reachable, "error": self.error,
            "state": self.state, "step": self.step, "phase": self.phase, "exit_code": self.exit_code,
            "steps": self.steps, "progress": self.progress.to_dict() if self.progress else None,
        }


def _describe(c: ContainerState) -> str:
    return c.status if c.status != "exited" else f"exited({c.exit_code})"


def host_status(cluster: Cluster, host: HostPlan) -> HostStatus:
    t = cluster.transport(host)
    st = HostStatus(host.name, host.node_rank)
    found = list_job_containers(t, cluster.plan.job_name)
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
    pretrain = host.step("pretrain")
    if pretrain is not None and pretrain.container_name in found:
        r = t.run(["docker", "logs", "--tail", str(LOG_TAIL), pretrain.container_name], timeout=60)
        st.progress = last_progress((r.stdout + "\n" + r.stderr).splitlines())
    return st


def job_status(cluster: Cluster) -> list[HostStatus]:
    outcomes = for_each(cluster.hosts, lambda h: host_status(cluster, h), key=lambda h: h.name)
    out = []
    for h in cluster.hosts:
        o = outcomes[h.name]
        out.append(o.value if o.value is not None else
                   HostStatus(h.name, h.node_rank, reachable=False, state="unknown",
                              error=str(o.error).removeprefix(f"{h.name}: ")))
    return out
