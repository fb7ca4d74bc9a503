"""RecoveryOps over real hosts: the train phase under a Supervisor, preflight re-checks, and
making a new host set ready (image, job files, the prepare steps its storage mode needs)."""

from __future__ import annotations

from dataclasses import replace

from q7x2_deploy.backends.container_runtime import ContainerState
from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.transport.factory import TransportFactory
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.executor.preflight import check_host
from q7x2_deploy.executor.recovery import HostCheck, Incident, Policy
from q7x2_deploy.runs.rundir import run_dir
from q7x2_deploy.executor.supervise import QUIET_WARNING_S, JobFailed, OnTraining, Supervisor
from q7x2_deploy.executor.up import survey, write_job_files
from q7x2_deploy.executor.image_delivery import deliver_image
from q7x2_deploy.inventory import Inventory
from q7x2_deploy.plan import Plan, build_plan
from q7x2_deploy.transport import Transport


class ClusterOps:
    """One per `up`. Transports are kept by host name across host sets and closed at the end
    (the first cluster's own transports are its owner's to close)."""

    def __init__(self, cluster: Cluster, factory: TransportFactory, sink: LogSink, *,
                 first_existing: dict[str, dict[str, ContainerState]] | None = None,
                 quiet_warning_s: float = QUIET_WARNING_S) -> None:
        self.factory = factory
        self.sink = sink
        self.quiet_warning_s = quiet_warning_s
        self._owned = set(cluster.transports)
        self._runtime_factory = cluster.runtime_factory
        self._transports: dict[str, Transport] = dict(cluster.transports)
        self._first_existing = first_existing
        self.supervisor: Supervisor | None = None
        # Interfaces `up` found for hosts without `nic` (from the first plan) and those a
        # re-check finds for a spare: every rebuilt plan pins them as the first one did.
        self.nics: dict[str, str] = detected_nics(cluster.plan)

    # -- clusters ---------------------------------------------------------------------

    def plan(self, inv: Inventory) -> Plan:
        return build_plan(inv).with_nics(self.nics)

    def cluster(self, plan: Plan) -> Cluster:
        for h in plan.hosts:
            if h.name not in self._transports:
                self._transports[h.name] = self.factory(h)
        return Cluster(plan, {h.name: self._transports[h.name] for h in plan.hosts}, self._runtime_factory)

    def close(self) -> None:
        for name, t in self._transports.items():
            if name not in self._owned:
                t.close()

    # -- RecoveryOps ------------------------------------------------------------------

    def train(self, inv: Inventory, on_training: OnTraining) -> Incident | None:
        cluster = self.cluster(self.plan(inv))
        if self._first_existing is not None:
            existing, self._first_existing = self._first_existing, None
        else:
            existing = survey(cluster)
        sup = Supervisor(cluster, self.sink, quiet_warning_s=self.quiet_warning_s,
                         hang_timeout_s=Policy.of(inv).hang_timeout_s, on_training=on_training)
        self.supervisor = sup
        try:
            sup.run_phase("train", existing)
        except JobFailed as e:
            f = sup.failure
            if f is None:
                raise
            return Incident(f.host, f.rank, f.kind, f.reason, f.detected_at,  # type: ignore[arg-type]
                            f.healthy_until, sup.last_iteration, f.exit_code, message=str(e))
        return None

    def check(self, inv: Inventory, host: str) -> HostCheck:
        cluster = self.cluster(self.plan(inv))
        report = check_host(cluster, cluster.host(host))
        if report.nic:
            self.nics[host] = report.nic
        bad = report.failures
        if not bad:
            return HostCheck(host, "ok")
        first = bad[0]
        return HostCheck(host, "unreachable" if first.name == "ssh" else "unhealthy", f"{first.name}: {first.detail}")

    def switch(self, old: Inventory, new: Inventory) -> None:
        plan = self.plan(new)
        cluster = self.cluster(plan)
        before = {h.name for h in old.hosts}
        fresh = [h for h in plan.hosts if h.name not in before]
        _remove_train_containers(cluster)
        if fresh:
            newcomers = Cluster(replace(plan, hosts=fresh), {h.name: cluster.transport(h) for h in fresh},
                                cluster.runtime_factory)
            for d in deliver_image(newcomers, progress=lambda s: self.sink.note(f"q7x2-deploy: {s}")):
                self.sink.note(f"q7x2-deploy: {d.host}: {d.describe()}")
        write_job_files(cluster)  # every host: the master may have moved
        if fresh and plan.storage == "per-node":
            # A new host prepares its own copy (weights, dataset); shared storage already has it.
            newcomers = Cluster(replace(plan, hosts=fresh), {h.name: cluster.transport(h) for h in fresh},
                                cluster.runtime_factory)
            sup = Supervisor(newcomers, self.sink, quiet_warning_s=self.quiet_warning_s)
            self.sink.note(f"q7x2-deploy: phase prepare on {', '.join(h.name for h in fresh)}")
            try:
                sup.run_phase("prepare", survey(newcomers))
            except JobFailed as e:
                raise DeployError(f"prepare failed on a new host ({e}); not retried") from None
        (run_dir(plan.job_name) / "plan.json").write_text(plan.to_json())

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds)

    def now(self) -> float:
        import time

        return time.monotonic()

    def stop_everywhere(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop_everywhere()


def detected_nics(plan: Plan) -> dict[str, str]:
    """host -> the interface its collectives are pinned to. Hosts with `nic` in the inventory are
    in it too; harmless: with_nics only pins hosts whose fresh plan still needs detection."""
    return {h.name: h.env["GLOO_SOCKET_IFNAME"] for h in plan.hosts if "GLOO_SOCKET_IFNAME" in h.env}


def _remove_train_containers(cluster: Cluster) -> None:
    """The failed run's train containers (stopped, kept for their logs until now) go, so the
    train phase starts fresh on every host; the prepare containers stay as the record of what
    is done."""
    job = cluster.plan.job_name
    outcomes = for_each(cluster.hosts, lambda h: cluster.runtime(h).remove_job(job, phase="train"),
                        key=lambda h: h.name)
    for name, o in outcomes.items():
        if o.error is not None:
            raise DeployError(f"{name}: could not remove the failed run's containers: {o.error}")
