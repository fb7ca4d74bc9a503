"""The local run directory: ./.q7x2/runs/<job>/ holds the lock, the plan and host logs.

Each `up` that starts the job (rather than attaching to it) is a new attempt: the host logs
and the result of the one before move to earlier/<time it ended>/, so a run's logs never mix
with another's and a stale "finished" never describes a run that failed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

RUNS_ROOT_ENV = "Q7X2_RUNS_DIR"
EARLIER = "earlier"
KEPT_ATTEMPTS = 10
RESULT_FILE = "result.json"
EVENTS_FILE = "events.jsonl"  # one JSON object per recovery event of the current attempt
SUPERVISOR_FILE = "supervisor.json"  # the detached supervisor: pid, start time, log
# The deployer's own lines, each after its time and a tab: the run's timeline (not a host log).
DEPLOYER_LOG = "deployer.tsv"
STAMP = "%Y%m%d-%H%M%S"
_STAMP_LEN = len("20260101-000000")


def _order(attempt: Path) -> tuple[str, int]:
    """(end time, number within that second): attempt directories oldest first."""
    name = attempt.name
    suffix = name[_STAMP_LEN + 1:]
    return name[:_STAMP_LEN], int(suffix) if suffix.isdigit() else 1


def _runs_root() -> Path:
    return Path(os.environ.get(RUNS_ROOT_ENV, ".q7x2/runs"))


def run_dir(job: str) -> Path:
    d = _runs_root() / job
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_dir_if_exists(job: str) -> Path | None:
    """The run directory without creating it (read-only commands)."""
    d = _runs_root() / job
    return d if d.is_dir() else None


def host_log_path(job: str, host: str) -> Path:
    return run_dir(job) / f"{host}.log"


def start_attempt(job: str) -> Path | None:
    """Set the previous attempt's logs and result aside; returns where they went, if anywhere."""
    d = run_dir(job)
    old = [p for p in [*d.glob("*.log"), d / RESULT_FILE, d / DEPLOYER_LOG, d / EVENTS_FILE] if p.is_file()]
    if not old:
        return None
    ended = time.strftime(STAMP, time.localtime(max(p.stat().st_mtime for p in old)))
    earlier = d / EARLIER
    earlier.mkdir(exist_ok=True)
    # Attempts that ended in the same second get -2, -3, ... after the newest one so far.
    same = [n for stamp, n in map(_order, earlier.iterdir()) if stamp == ended]
    dest = earlier / (ended if not same else f"{ended}-{max(same) + 1}")
    dest.mkdir()
    for p in old:
        p.rename(dest / p.name)
    for stale in sorted(earlier.iterdir(), key=_order)[:-KEPT_ATTEMPTS]:
        shutil.rmtree(stale, ignore_errors=True)
    return dest


def mark_finished(job: str) -> None:
    (run_dir(job) / RESULT_FILE).write_text('{"status": "finished"}\n', encoding="utf-8")


def append_event(job: str, line: str) -> None:
    """One record per line, appended and flushed at once, so a crash loses no earlier event."""
    with open(run_dir(job) / EVENTS_FILE, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_events(job: str) -> list[dict[str, object]]:
    import json

    path = run_dir(job) / EVENTS_FILE
    if not path.is_file():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue  # a line cut short by a crash mid-write
    return out
