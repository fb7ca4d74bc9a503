"""`check --deep`: `q7x2-runtime doctor` in a short-lived container of the job's image on
every host, so a host whose image holds other versions than it was built with (a stale or
hand-modified image under the same reference, a PYTHONPATH in the inventory's env that shadows
a package) fails the preflight with one line per component.

The container gets the job's environment (-e) and read-only mounts (the driver and toolkit
mounts an Ascend site adds), which can change what doctor finds, but no NPU devices (doctor
reads versions without touching an NPU, so a card in use elsewhere is never disturbed), no
network and none of the job's writable volumes (docker would create a missing one on the host).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from q7x2_deploy.errors import DeployError, reason_for
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.probe import Check
from q7x2_deploy.plan import LABEL_PREFIX, HostPlan, Mount
from q7x2_deploy.transport import CommandResult
from q7x2_runtime.doctor.compare import Finding
from q7x2_runtime.steps import JOB_FILE_IN_CONTAINER

if TYPE_CHECKING:
    from q7x2_deploy.executor.preflight import HostReport

DOCTOR_TIMEOUT_S = 180.0  # a container start plus reading package metadata; minutes on a loaded host
DOCTOR_EXIT_MISMATCH = 1
JOB_DIR_IN_CONTAINER = JOB_FILE_IN_CONTAINER.rsplit("/", 1)[0]
DOCTOR_LABEL = f"{LABEL_PREFIX}.doctor"


DOCTOR_COMMAND = ("q7x2-runtime", "doctor", "--json")


def doctor_mounts(host: HostPlan) -> list[Mount]:
    """The host's read-only mounts; the job directory is left out: `up` creates it, and it would
    hide nothing doctor needs."""
    return [m for m in host.mounts if m.read_only and m.target != JOB_DIR_IN_CONTAINER]


def judge_doctor(r: CommandResult, image: str) -> Check:
    """The doctor check from the container's exit status and JSON (one detail per mismatch)."""
    report = next((line for line in reversed(r.stdout.splitlines()) if line.startswith("{")), None)
    if r.exit_status in (0, DOCTOR_EXIT_MISMATCH) and report is not None:
        try:
            data = json.loads(report)
            findings = [Finding(**f) for f in data["findings"]]
        except (ValueError, KeyError, TypeError):
            return Check("doctor", "fail", f"doctor printed no readable report: {report[:200]}")
        bad = [f.line() for f in findings if f.verdict != "ok"]
        if bad:
            return Check("doctor", "fail", "; ".join(bad))
        shown = ", ".join(f"{f.name} {f.have}" for f in findings[:4])
        return Check("doctor", "ok", f"{len(findings)} versions match the image's pins ({shown}, ...)")
    return Check("doctor", "fail", f"doctor could not run in {image} (exit {r.exit_status}): "
                                   f"{r.last_lines(1) or 'no output'}")


def check_image_versions(cluster: Cluster, reports: list[HostReport]) -> None:
    """Adds a doctor check to every host report whose image is present (others: skip)."""
    by_host = {r.host: r for r in reports}
    ready = [h for h in cluster.hosts if h.name in by_host and by_host[h.name].image_id]
    for h in cluster.hosts:
        if h.name in by_host and h not in ready:
            by_host[h.name].add("doctor", "skip", "image not on the host (yet): nothing to run")
    image = cluster.plan.image_ref

    def _run(h: HostPlan) -> Check:
        try:
            result = cluster.runtime(h).run_once(image, DOCTOR_COMMAND, env=h.env, mounts=doctor_mounts(h),
                                                 labels={DOCTOR_LABEL: "1"}, timeout_s=DOCTOR_TIMEOUT_S)
            return judge_doctor(result, image)
        except DeployError as e:
            return Check("doctor", "fail", reason_for(e, h.name))

    outcomes = for_each(ready, _run, key=lambda h: h.name)
    for h in ready:
        o = outcomes[h.name]
        by_host[h.name].replace(o.value if o.value is not None else Check("doctor", "fail", str(o.error)))
