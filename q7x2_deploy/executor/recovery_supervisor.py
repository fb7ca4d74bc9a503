"""The detached supervisor: after `up --detach`, a small process on the operator's machine that
attaches to the job (an attached `up`) and recovers it, so a detached job is not left to fail
fast. Its pid is in .q7x2/runs/<job>/supervisor.json; `status` shows it and `down` stops it
before removing containers, so it never restarts a job that is being taken down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from q7x2_deploy.runs.rundir import SUPERVISOR_FILE, run_dir

SUPERVISOR_LOG = "supervisor.out"  # not *.log: host logs are *.log and move with each attempt


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # A recycled pid belongs to some other program: only ours counts.
    args = cmdline.split(b"\0")
    return any(b"q7x2_deploy" in a for a in args) and b"up" in args


def supervisor_info(job: str) -> dict | None:
    """The running supervisor's record ({pid, started, log, inventory}), or None."""
    path = run_dir(job) / SUPERVISOR_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None
    return info


def start_supervisor(job: str, inventory: str, extra_args: list[str]) -> dict:
    """Start the supervisor unless one is running; returns its record."""
    if (info := supervisor_info(job)) is not None:
        return info
    d = run_dir(job)
    log = d / SUPERVISOR_LOG
    argv = [sys.executable, "-m", "q7x2_deploy.cli", "up", os.path.abspath(inventory), *extra_args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=os.getcwd(), start_new_session=True)  # survives the terminal
    info = {"pid": proc.pid, "started": time.time(), "log": str(log), "inventory": os.path.abspath(inventory)}
    tmp = d / (SUPERVISOR_FILE + ".tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    tmp.replace(d / SUPERVISOR_FILE)
    return info


def stop_supervisor(job: str, timeout: float = 30.0) -> int | None:
    """SIGTERM the supervisor and wait for it; returns its pid, or None if none ran."""
    info = supervisor_info(job)
    if info is None:
        return None
    pid = int(info["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    (run_dir(job) / SUPERVISOR_FILE).unlink(missing_ok=True)
    return pid
