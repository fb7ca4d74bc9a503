"""The train phase with recovery: run it, and on a failure re-check, replace or wait, restart.

`train_with_recovery` is the loop and owns every decision's order (via recovery.py); what it
does to hosts goes through `RecoveryOps`, which `ClusterOps` implements over SSH and Docker and
the unit tests implement with a fake, so the whole loop runs in milliseconds there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.recovery import (
    HostCheck,
    Incident,
    Policy,
    RecoveryEvent,
    choose,
    describe_cause,
    out_of_restarts,
    replace_host,
)
from q7x2_deploy.executor.supervise import JobFailed, OnTraining
from q7x2_deploy.inventory import Inventory


class RecoveryStopped(JobFailed):
    """Recovery gave up (max_restarts used, or nothing could replace a host); job stopped."""


class RecoveryOps(Protocol):
    def train(self, inv: Inventory, on_training: OnTraining) -> Incident | None:
        """Run (or attach to) the train phase of `inv`'s plan until it finishes (None) or fails;
        on a failure the job is already stopped on every host that answers."""

    def check(self, inv: Inventory, host: str) -> HostCheck:
        """Preflight of one host of `inv` (a spare is checked in the inventory that uses it)."""

    def switch(self, old: Inventory, new: Inventory) -> None:
        """Make `new`'s hosts ready: the image and the prepare steps on hosts `old` did not have,
        job files everywhere, the failed run's train containers removed."""

    def sleep(self, seconds: float) -> None: ...

    def now(self) -> float: ...


Say = Callable[[str], None]
WAIT_POLL_S = 5.0


@dataclass
class _Pending:
    """The event of the last restart, written once the restarted run trains (or fails)."""

    event: RecoveryEvent
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class RecoveryLoop:
    ops: RecoveryOps
    policy: Policy
    say: Say
    journal: Callable[[RecoveryEvent], None]  # appends to events.jsonl
    wall: Callable[[], float] = time.time  # event times are wall clock, like the supervisor's
    restarts: int = 0
    _pending: _Pending | None = None

    # -- events -----------------------------------------------------------------------

    def _on_training(self, resume: int | None, first_iteration: int, at: float) -> None:
        p = self._pending
        if p is None:
            return
        with p.lock:
            if p.done:
                return
            if resume is None:  # an engine that did not say: the line before the first printed
                resume = max(0, first_iteration - 1)
            p.event.resumed(resume, at)
            self._write(p)

    def _write(self, p: _Pending) -> None:
        p.done = True
        self.say(p.event.line())
        self.journal(p.event)

    def _flush_pending(self) -> None:
        p = self._pending
        if p is not None:
            with p.lock:
                if not p.done:
                    self._write(p)
        self._pending = None

    # -- the loop ---------------------------------------------------------------------

    def run(self, inv: Inventory) -> Inventory:
        """Returns the inventory the job finished on."""
        while True:
            incident = self.ops.train(inv, self._on_training)
            self._flush_pending()
            if incident is None:
                return inv
            inv = self._recover(inv, incident)

    def _give_up(self, incident: Incident, cause: str, why: str, hosts: list[str]) -> None:
        ev = RecoveryEvent(self.restarts, self.policy.max_restarts, incident.host, incident.rank, cause,
                           f"giving up: {why}", incident.detected_at, _detect_s(incident),
                           incident.last_iteration, hosts=hosts, gave_up=True)
        self.say(ev.line())
        self.journal(ev)
        involved = ", ".join(hosts)
        raise RecoveryStopped(f"recovery stopped after {self.restarts} restart(s): {why} (hosts involved: {involved})")

    def _recover(self, inv: Inventory, incident: Incident) -> Inventory:
        if self.policy.max_restarts == 0:  # today's fail-fast: the supervisor's message stands
            raise JobFailed(incident.message or f"{incident.host} (rank {incident.rank}) failed: {incident.detail}")
        # A lost host has just missed its heartbeats: asking it again would only wait out an
        # SSH connect timeout (15 s) before the same answer. Every other failure is re-checked.
        check = (HostCheck(incident.host, "unreachable", "ssh: no reply to the heartbeat")
                 if incident.kind == "lost" else self.ops.check(inv, incident.host))
        cause = describe_cause(incident, check)
        if out_of_restarts(self.restarts, self.policy.max_restarts):
            self._give_up(incident, cause, f"{incident.host} failed again after {self.restarts} restart(s) "
                                           f"(max_restarts {self.policy.max_restarts})", [incident.host])
        new, action, hosts, waited = self._resolve(inv, incident, check, cause)
        self.restarts += 1
        ev = RecoveryEvent(self.restarts, self.policy.max_restarts, incident.host, incident.rank, cause, action,
                           incident.detected_at, _detect_s(incident), incident.last_iteration, hosts=hosts,
                           seconds_waiting_for_host=None if waited is None else round(waited, 3))
        self.say(f"q7x2-deploy: recovery {self.restarts}/{self.policy.max_restarts}: {incident.host} {cause}; "
                 f"{action}; starting the train phase again")
        try:
            self.ops.switch(inv, new)
        except DeployError as e:
            self._pending = _Pending(ev)
            self._flush_pending()
            self._give_up(incident, cause, f"could not make the new host set ready: {e}", hosts)
        ev.seconds_until_restart = round(max(0.0, self.wall() - incident.detected_at), 3)
        self._pending = _Pending(ev)
        return new

    def _resolve(self, inv: Inventory, incident: Incident, check: HostCheck,
                 cause: str) -> tuple[Inventory, str, list[str], float | None]:
        """The inventory to restart on, what was done to get it, the hosts involved, and how long
        the failed host was waited for (None: not waited for)."""
        action = choose(check, spare_available=bool(inv.spares), host_wait_s=self.policy.host_wait_s)
        if action == "same-hosts":
            return inv, "restart on the same hosts", [incident.host], None
        tried: list[str] = []
        if action == "replace":
            for spare in [s.name for s in inv.spares]:
                candidate = replace_host(inv, incident.host, spare)
                sc = self.ops.check(candidate, spare)
                if sc.ok:
                    role = " and becomes the master" if incident.rank == 0 else ""
                    return candidate, f"spare {spare} takes rank {incident.rank}{role}", [incident.host, spare], None
                tried.append(spare)
                self.say(f"q7x2-deploy: spare {spare} is not usable ({sc.detail or sc.health}); trying the next")
            action = "wait" if self.policy.host_wait_s > 0 else "give-up"
        if action == "wait":
            back = self._wait_for(inv, incident.host)
            if back is not None:
                return inv, f"{incident.host} came back after {back:.0f}s and passed preflight", [incident.host], back
            self._give_up(incident, cause, f"{incident.host} did not pass preflight within "
                                           f"{self.policy.host_wait_s / 60:g} min (host_wait_minutes) and no spare "
                                           f"was usable{' (' + ', '.join(tried) + ')' if tried else ''}",
                          [incident.host, *tried])
        self._give_up(incident, cause, f"no healthy spare left for {incident.host}"
                                       + (f" (tried {', '.join(tried)})" if tried else "")
                                       + " and host_wait_minutes is 0", [incident.host, *tried])
        raise AssertionError("not reached")

    def _wait_for(self, inv: Inventory, host: str) -> float | None:
        """Seconds until the host passed preflight again, or None after host_wait_s."""
        self.say(f"q7x2-deploy: no spare for {host}; waiting up to {self.policy.host_wait_s / 60:g} min "
                 "for it to answer and pass preflight")
        start = self.ops.now()
        deadline = start + self.policy.host_wait_s
        while True:
            if self.ops.check(inv, host).ok:
                return self.ops.now() - start
            if self.ops.now() >= deadline:
                return None
            self.ops.sleep(min(WAIT_POLL_S, max(0.0, deadline - self.ops.now())))


def _detect_s(incident: Incident) -> float | None:
    if incident.healthy_until is None:
        return None
    return round(max(0.0, incident.detected_at - incident.healthy_until), 3)


def train_with_recovery(ops: RecoveryOps, inv: Inventory, say: Say,
                        journal: Callable[[RecoveryEvent], None]) -> Inventory:
    return RecoveryLoop(ops, Policy.of(inv), say, journal).run(inv)


