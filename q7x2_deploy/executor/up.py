"""`up`: preflight, image, job file, then the phases as barriers: prepare, then train.

Re-running converges instead of repeating: steps whose container already exited 0 are
skipped, a running job is attached to, failed or stopped containers are replaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from q7x2_deploy.backends.container_runtime import ContainerState
from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.transport.factory import TransportFactory
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.lock import JobLock
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.executor.preflight import HostReport, failure_message, preflight
from q7x2_deploy.runs.rundir import append_event, mark_finished, run_dir, start_attempt
from q7x2_deploy.executor.supervise import QUIET_WARNING_S, Supervisor
from q7x2_deploy.executor.image_delivery import deliver_image
from q7x2_deploy.inventory import Inventory

PHASES = ("prepare", "train")


@dataclass
class UpHooks:
    """What `up` shows the operator; the command module renders these with rich."""

    on_preflight: Callable[[list[HostReport]], None] = lambda reports: None


def survey(cluster: Cluster) -> dict[str, dict[str, ContainerState]]:
    job = cluster.plan.job_name
    outcomes = for_each(cluster.hosts, lambda h: cluster.runtime(h).list_job(job),
                        key=lambda h: h.name)
    for name, o in outcomes.items():
        if o.error is not None:
            raise DeployError(f"{name}: could not list the job's containers: {o.error}")
    return {name: o.value or {} for name, o in outcomes.items()}


def write_job_files(cluster: Cluster) -> None:
    spec = cluster.plan.job_spec.to_json().encode()
    outcomes = for_each(cluster.hosts, lambda h: cluster.transport(h).write_file(h.job_file, spec, 0o644),
                        key=lambda h: h.name)
    for name, o in outcomes.items():
        if o.error is not None:
            raise DeployError(f"{name}: could not write the job file: {o.error}")


def _running_phase(existing: dict[str, dict[str, ContainerState]]) -> str | None:
    running = {c.phase for host in existing.values() for c in host.values() if c.running}
    return next((p for p in reversed(PHASES) if p in running), None)


def _all_done(cluster: Cluster, existing: dict[str, dict[str, ContainerState]]) -> bool:
    for h in cluster.hosts:
        for s in h.steps:
            c = existing.get(h.name, {}).get(s.container_name)
            if c is None or not c.succeeded:
                return False
    return True


def up(cluster: Cluster, sink: LogSink, *, detach: bool = False, hooks: UpHooks | None = None,
       quiet_warning_s: float = QUIET_WARNING_S, inventory: Inventory | None = None,
       factory: TransportFactory | None = None) -> int:
    """With the inventory (and a transport factory for hosts the plan does not have yet), a
    watched train phase recovers from failures by job.recovery; without, it fails fast."""
    hooks = hooks or UpHooks()
    plan = cluster.plan
    with JobLock(run_dir(plan.job_name) / "up.lock", plan.job_name):
        (run_dir(plan.job_name) / "plan.json").write_text(plan.to_json())
        try:
            existing = survey(cluster)
        except DeployError as e:
            # A host we cannot even ask: the preflight table says why, host by host.
            reports = preflight(cluster)
            hooks.on_preflight(reports)
            raise DeployError(failure_message(reports) or str(e)) from None
        current = _running_phase(existing)
        if current is not None:
            hosts = sorted(n for n, cs in existing.items() if any(c.running for c in cs.values()))
            sink.note(f"q7x2-deploy: job {plan.job_name} is already running ({current} phase on "
                      f"{', '.join(hosts)}); attaching")
            if detach:
                return 0
            phases = PHASES[PHASES.index(current):]
        else:
            if _all_done(cluster, existing):
                sink.note(f"q7x2-deploy: job {plan.job_name} already finished on every host; "
                          "`q7x2-deploy down` removes its containers to start over")
                return 0
            started = time.monotonic()
            if (earlier := start_attempt(plan.job_name)) is not None:
                sink.note(f"q7x2-deploy: new attempt; the previous one's logs are in {earlier}")
            reports = preflight(cluster)
            hooks.on_preflight(reports)
            if (msg := failure_message(reports)) is not None:
                raise DeployError(msg)
            if nics := {r.host: r.nic for r in reports if r.nic}:
                # Hosts without `nic`: pin the collective libraries to the interface found.
                cluster.plan = plan = plan.with_nics(nics)
                (run_dir(plan.job_name) / "plan.json").write_text(plan.to_json())
                sink.note("q7x2-deploy: NICs detected: " + ", ".join(f"{h} {n}" for h, n in nics.items()))
            deliveries = deliver_image(cluster, progress=lambda s: sink.note(f"q7x2-deploy: {s}"),
                                       known_ids={r.host: r.image_id for r in reports})
            for d in deliveries:
                sink.note(f"q7x2-deploy: {d.host}: {d.describe()}")
            write_job_files(cluster)
            sink.note(f"q7x2-deploy: preflight, image and job files ready in {time.monotonic() - started:.1f}s")
            phases = PHASES
        from q7x2_deploy.executor.recovery_cluster import ClusterOps  # it uses survey() from here
        from q7x2_deploy.executor.recovery_run import train_with_recovery

        supervisor = Supervisor(cluster, sink, quiet_warning_s=quiet_warning_s)
        ops: ClusterOps | None = None
        try:
            for phase in phases:
                sink.note(f"q7x2-deploy: phase {phase}")
                watch = not (detach and phase == PHASES[-1])
                if phase == "train" and watch and inventory is not None and factory is not None:
                    ops = ClusterOps(cluster, factory, sink, first_existing=existing, quiet_warning_s=quiet_warning_s)
                    train_with_recovery(ops, inventory, sink.note,
                                        lambda ev: append_event(plan.job_name, ev.to_json()))
                else:
                    supervisor.run_phase(phase, existing, watch=watch)
        except KeyboardInterrupt:
            supervisor.stop.set()
            sink.note(f"q7x2-deploy: interrupted; stopping job {plan.job_name} on every host")
            (ops or supervisor).stop_everywhere()
            raise
        finally:
            if ops is not None:
                ops.close()
        if detach:
            sink.note(f"q7x2-deploy: job {plan.job_name} started on {len(cluster.hosts)} hosts; "
                      f"follow it with `q7x2-deploy logs -f`, stop it with `q7x2-deploy down`")
        else:
            sink.note(f"q7x2-deploy: job {plan.job_name} finished on every host")
            mark_finished(plan.job_name)
        return 0

