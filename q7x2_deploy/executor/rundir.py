"""The local run directory: ./.q7x2/runs/<job>/ holds the lock, the plan and host logs."""

from __future__ import annotations

import os
from pathlib import Path

RUNS_ROOT_ENV = "Q7X2_RUNS_DIR"


def run_dir(job: str) -> Path:
    root = Path(os.environ.get(RUNS_ROOT_ENV, ".q7x2/runs"))
    d = root / job
    d.mkdir(parents=True, exist_ok=True)
    return d


def host_log_path(job: str, host: str) -> Path:
    return run_dir(job) / f"{host}.log"
