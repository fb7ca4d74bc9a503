"""What a failed attempt leaves behind: the likely cause, printed first, and result.json.

The diagnosis reads every host's whole log as kept in the run directory (not only the last lines
in memory), so the evidence line can be from long before the failure was noticed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from q7x2_deploy.diagnosis import Diagnosis, diagnose, evidence_from_logs
from q7x2_deploy.runs.rundir import RESULT_FILE, run_dir
from q7x2_deploy.plan import Plan

_LOG_TAIL_BYTES = 2 * 1024 * 1024  # a multi-day log is read from its end


def _tail_lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - _LOG_TAIL_BYTES))
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def diagnose_attempt(plan: Plan, *, failed_host: str | None, lost: Sequence[str] = (),
                     check_failures: dict[str, list[str]] | None = None) -> Diagnosis:
    d = run_dir(plan.job_name)
    logs = {h.name: _tail_lines(d / f"{h.name}.log") for h in plan.hosts}
    evidence = evidence_from_logs(logs, {h.name: h.node_rank for h in plan.hosts},
                                  {h.name: h.address for h in plan.hosts}, lost=lost,
                                  failed_first=failed_host, check_failures=check_failures)
    return diagnose(evidence, npus_per_node=plan.job_spec.job.parallelism.npus_per_node)


def write_result(job: str, status: str, **fields: object) -> None:
    """result.json, replaced atomically so `status`/`report` never read half of it."""
    path = run_dir(job) / RESULT_FILE
    tmp = path.with_name(f".{RESULT_FILE}.tmp")
    tmp.write_text(json.dumps({"status": status, "time": time.time(), **fields}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
