"""Turn a failed launch's log into one line that says what went wrong, where a pattern is known."""

from __future__ import annotations

import re
from pathlib import Path

from q7x2_runtime.pretrain.node import Placement

_WORKER_ERROR = re.compile(r"q7x2-runtime pretrain \(rank \d+\): error: (.*)")
_JOINED = re.compile(r"waiting for clients\. (\d+)/(\d+) clients joined")
_CLIENT_TIMEOUT = re.compile(r"client socket has timed out|Failed to connect|Connection refused", re.IGNORECASE)


def read_new_output(log: Path, offset: int, limit: int = 256 * 1024) -> str:
    """What this launch appended to the log (the file is shared by every launch of the node)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(offset, f.seek(0, 2) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def explain_failure(output: str, placement: Placement) -> str | None:
    master = f"{placement.master_addr}:{placement.master_port}"
    m = _WORKER_ERROR.search(output)
    if m:  # the trainer's own one-line diagnosis
        return m.group(1).strip()
    m = _JOINED.search(output)
    if m:
        return (
            f"only {m.group(1)} of {m.group(2)} nodes joined the master {master} within "
            f"{placement.connect_timeout_s} s (cluster.connect_timeout_s); check that every node was started "
            "and can reach the master"
        )
    if _CLIENT_TIMEOUT.search(output) and placement.node_rank != 0:
        return (
            f"node {placement.node_rank} lost or could not reach the master {master} within "
            f"{placement.connect_timeout_s} s (cluster.connect_timeout_s)"
        )
    return None
