"""Recovery decisions: what failed, what replaces it, and the record of each event.

Everything here is pure (no host, no clock of its own), so every decision is unit-tested in
milliseconds; recovery_run.py carries the decisions out on a real cluster. The host set after a
replacement is a new inventory, and the plan for it is `build_plan` of that inventory: a
replacement never patches a plan or an argv.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from q7x2_deploy.inventory import Inventory

if TYPE_CHECKING:
    from q7x2_deploy.plan import HostPlan, Plan

# What the supervisor saw: a container that exited non-zero, a host that stopped answering, no
# iteration line for hang_timeout while every host answered, a container that would not start.
IncidentKind = Literal["exit", "lost", "hang", "start"]
# What a re-check of a host (its preflight) found afterwards.
Health = Literal["ok", "unreachable", "unhealthy"]
Action = Literal["same-hosts", "replace", "wait", "give-up"]


@dataclass(frozen=True)
class Incident:
    host: str
    rank: int
    kind: IncidentKind
    detail: str  # one line: "container q7x2-x-pretrain-1 exited with status 137", ...
    detected_at: float  # wall clock (time.time()) when the deployer noticed
    healthy_until: float | None = None  # last time the host was seen fine (heartbeat, line)
    last_iteration: int | None = None  # the newest iteration line of the run that failed
    exit_code: int | None = None
    message: str = ""  # the supervisor's one-line failure, as fail-fast reports it


@dataclass(frozen=True)
class HostCheck:
    """A host's preflight, reduced to what recovery decides on."""

    host: str
    health: Health
    detail: str = ""  # the first failing check, "npu: NPU 0 Alarm"

    @property
    def ok(self) -> bool:
        return self.health == "ok"


@dataclass(frozen=True)
class Policy:
    max_restarts: int = 3
    hang_timeout_s: float = 1800.0
    host_wait_s: float = 600.0

    @classmethod
    def of(cls, inv: Inventory) -> "Policy":
        r = inv.job.recovery
        return cls(r.max_restarts, r.hang_timeout_minutes * 60, r.host_wait_minutes * 60)


def describe_cause(incident: Incident, check: HostCheck | None) -> str:
    """The cause as the event line says it: `sbx-2 lost (no SSH reply)`, without the host."""
    if incident.kind == "lost":
        cause = "lost (no SSH reply)"
    elif incident.kind == "hang":
        cause = f"hung ({incident.detail})"
    elif incident.kind == "exit" and incident.exit_code is not None:
        cause = f"container exited with status {incident.exit_code}"
    else:
        cause = incident.detail
    if check is not None and check.health == "unhealthy":
        cause += f"; re-check: {check.detail}"
    elif check is not None and check.health == "unreachable" and incident.kind != "lost":
        cause += "; re-check: no SSH reply"
    return cause


def choose(check: HostCheck, *, spare_available: bool, host_wait_s: float) -> Action:
    """What to do about one host after the job stopped everywhere.

    A host that passes its re-check keeps its rank (a killed container, a hang, a short network
    outage). A host that is gone or unhealthy is replaced by a healthy spare if one is left,
    else waited for (host_wait_s), else recovery stops.
    """
    if check.ok:
        return "same-hosts"
    if spare_available:
        return "replace"
    if host_wait_s > 0:
        return "wait"
    return "give-up"


def out_of_restarts(restarts_done: int, max_restarts: int) -> bool:
    return restarts_done >= max_restarts


def replace_host(inv: Inventory, failed: str, spare: str) -> Inventory:
    """The inventory in which `spare` stands where `failed` stood, with its node rank.

    The spare leaves spares[]; the failed host leaves hosts[] (it may come back, but not into
    this run). If the failed host was the named master, the spare becomes the master; with no
    named master the master is rank 0 anyway, so it moves with the rank.
    """
    ranks = {h.name: r for r, h in inv.ranked_hosts()}
    if failed not in ranks:
        raise ValueError(f"{failed!r} is not one of the hosts")
    new = next((s for s in inv.spares if s.name == spare), None)
    if new is None:
        raise ValueError(f"{spare!r} is not one of the spares")
    taking = new.model_copy(update={"node_rank": ranks[failed]})
    hosts = [taking if h.name == failed else h for h in inv.hosts]
    master = inv.master
    if master.host == failed:
        master = master.model_copy(update={"host": spare})
    data = inv.model_dump(mode="python", exclude_unset=False)
    data["hosts"] = [h.model_dump() for h in hosts]
    data["spares"] = [s.model_dump() for s in inv.spares if s.name != spare]
    data["master"] = master.model_dump()
    return Inventory.model_validate(data)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class RecoveryEvent:
    """One line of events.jsonl: one failure and what `up` did about it."""

    restart: int  # 1.. for a restart; the give-up event carries the restarts used so far
    max_restarts: int
    host: str
    rank: int
    cause: str
    action: str  # "spare sbx-3 takes rank 1", "restart on the same hosts", "give up: ..."
    detected_at: float
    seconds_to_detect: float | None = None  # detection - last time the host was seen fine
    last_iteration: int | None = None  # newest iteration printed before the failure
    resume_iteration: int | None = None  # where the restarted run resumed
    iterations_lost: int | None = None  # last_iteration - resume_iteration
    seconds_until_training: float | None = None  # detection -> first iteration line after it
    seconds_until_restart: float | None = None  # detection -> the train containers start again
    # Of the above, how long the failed host was waited for (no spare): the outage, not the restart.
    seconds_waiting_for_host: float | None = None
    hosts: list[str] = field(default_factory=list)  # every host the event involved
    gave_up: bool = False

    def resumed(self, resume_iteration: int | None, training_at: float) -> None:
        self.resume_iteration = resume_iteration
        if resume_iteration is not None and self.last_iteration is not None:
            self.iterations_lost = max(0, self.last_iteration - resume_iteration)
        self.seconds_until_training = round(max(0.0, training_at - self.detected_at), 3)

    def line(self) -> str:
        head = f"q7x2-deploy: recovery {self.restart}/{self.max_restarts}: {self.host} {self.cause}; {self.action}"
        if self.gave_up:
            return head
        if self.resume_iteration is not None:
            return f"{head}; resuming from iteration {self.resume_iteration}"
        return head

    def to_record(self) -> dict[str, object]:
        d = asdict(self)
        d["time"] = _iso(self.detected_at)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_record(), sort_keys=True)


def restarts_used(records: list[dict[str, object]]) -> int:
    """How many restarts a run's events record (a give-up is not a restart)."""
    return sum(1 for r in records if not r.get("gave_up"))


def spare_host_plans(inv: Inventory, plan: "Plan") -> list["HostPlan"]:
    """Each spare as a host of the plan it would join (standing in for rank 0), for commands
    that must reach every host that may run the job's containers (`down`)."""
    from q7x2_deploy.plan import build_plan

    if not inv.spares:
        return []
    first = inv.ranked_hosts()[0][1].name
    out = []
    for s in inv.spares:
        p = build_plan(replace_host(inv, first, s.name))
        out.append(next(h for h in p.hosts if h.name == s.name))
    return out
