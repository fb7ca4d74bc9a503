"""The job's containers on one host, found by label and described by `docker inspect`."""

from __future__ import annotations

import json
from dataclasses import dataclass

from q7x2_deploy.plan import LABEL_PREFIX
from q7x2_deploy.transport import Transport

JOB_LABEL = f"{LABEL_PREFIX}.job"


def job_filter(job: str) -> list[str]:
    return ["--filter", f"label={JOB_LABEL}={job}"]


@dataclass(frozen=True)
class ContainerState:
    name: str
    id: str
    status: str  # created | running | exited | dead | ...
    exit_code: int
    labels: dict[str, str]
    image_id: str
    started_at: str
    finished_at: str

    @property
    def step(self) -> str:
        return self.labels.get(f"{LABEL_PREFIX}.step", "?")

    @property
    def phase(self) -> str:
        return self.labels.get(f"{LABEL_PREFIX}.phase", "?")

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting", "created")

    @property
    def succeeded(self) -> bool:
        return self.status == "exited" and self.exit_code == 0


def list_job_containers(t: Transport, job: str) -> dict[str, ContainerState]:
    """Containers of `job` on this host by name; never sees any other container."""
    ids = t.check(["docker", "ps", "-aq", "--no-trunc", *job_filter(job)], timeout=60).stdout.split()
    if not ids:
        return {}
    data = json.loads(t.check(["docker", "inspect", *ids], timeout=60).stdout)
    out: dict[str, ContainerState] = {}
    for c in data:
        labels = (c.get("Config") or {}).get("Labels") or {}
        if labels.get(JOB_LABEL) != job:  # belt and braces: the filter already did this
            continue
        st = c.get("State") or {}
        name = c.get("Name", "").lstrip("/")
        out[name] = ContainerState(
            name=name,
            id=c.get("Id", ""),
            status=st.get("Status", "unknown"),
            exit_code=int(st.get("ExitCode", 0)),
            labels=labels,
            image_id=c.get("Image", ""),
            started_at=st.get("StartedAt", ""),
            finished_at=st.get("FinishedAt", ""),
        )
    return out


def stop_job(t: Transport, job: str, grace_s: int = 10) -> list[str]:
    """Stop the job's running containers (kept for their logs); returns their names."""
    ids = t.check(["docker", "ps", "-q", *job_filter(job)], timeout=60).stdout.split()
    if ids:
        t.run(["docker", "stop", "-t", str(grace_s), *ids], timeout=grace_s + 60)
    return ids


def remove_containers(t: Transport, names: list[str]) -> None:
    if names:
        t.check(["docker", "rm", "-f", *names], timeout=120)


def remove_job(t: Transport, job: str) -> int:
    """`down` on one host: remove every container labeled with the job. Idempotent."""
    ids = t.check(["docker", "ps", "-aq", *job_filter(job)], timeout=60).stdout.split()
    if ids:
        t.check(["docker", "rm", "-f", *ids], timeout=120)
    return len(ids)
