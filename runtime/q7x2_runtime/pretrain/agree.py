"""The launchers of all nodes agree on the start point before any of them starts torchrun.

Node 0 serves a torch.distributed TCPStore on the master port for the few seconds of the
exchange; each node posts its survey of save_dir, reads everybody's, and computes the same
decision (pretrain/start.py). The store is closed before torchrun binds the same port: the other
nodes close their connections first (they are the active closers, so no port lingers on node 0),
and node 0 closes the server only after every node said it is done.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from q7x2_runtime.errors import UserError
from q7x2_runtime.pretrain.node import Placement
from q7x2_runtime.pretrain.start import NodeSurvey

_PREFIX = "q7x2/start"


def _wait_keys(store, keys: list[str], timeout_s: float, what: Callable[[list[str]], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [k for k in keys if not store.check([k])]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise UserError(what(missing))
        time.sleep(0.1)


def exchange(placement: Placement, mine: NodeSurvey, after_decision: Callable[[list[NodeSurvey]], None]) -> list[NodeSurvey]:
    """Post this node's survey, return every node's (by node rank). after_decision runs once all
    surveys are in and before the exchange ends (node 0 fixes shared files there)."""
    import torch.distributed as dist

    n, me = placement.nnodes, placement.node_rank
    timeout = float(placement.connect_timeout_s)
    try:
        store = dist.TCPStore(
            placement.master_addr, placement.master_port, n, me == 0,
            timeout=datetime.timedelta(seconds=timeout), wait_for_workers=False,
        )  # fmt: skip
    except (RuntimeError, OSError) as e:
        role = "serve" if me == 0 else "reach"
        raise UserError(
            f"node {me} could not {role} the start-point exchange on {placement.master_addr}:{placement.master_port} "
            f"({str(e).splitlines()[0][:160]})"
        ) from None
    try:
        store.set(f"{_PREFIX}/survey/{me}", mine.to_json())
        keys = [f"{_PREFIX}/survey/{r}" for r in range(n)]
        _wait_keys(store, keys, timeout, lambda missing: (
            f"only {n - len(missing)} of {n} nodes joined the master {placement.master_addr}:{placement.master_port} "
            f"within {timeout:g} s (cluster.connect_timeout_s; missing node(s) {', '.join(k.rsplit('/', 1)[1] for k in missing)}); "
            "check that every node was started and can reach the master"
        ))  # fmt: skip
        surveys = [NodeSurvey.from_json(store.get(k).decode()) for k in keys]
        after_decision(surveys)
        if me == 0:
            store.set(f"{_PREFIX}/done/0", "1")
            _wait_keys(store, [f"{_PREFIX}/done/{r}" for r in range(1, n)], timeout,
                       lambda missing: f"node(s) {', '.join(k.rsplit('/', 1)[1] for k in missing)} left the start-point exchange")  # fmt: skip
        else:
            # Wait for node 0 to finish its part (a tracker fixed on shared storage), then leave.
            _wait_keys(store, [f"{_PREFIX}/done/0"], timeout, lambda _m: "node 0 left the start-point exchange")
            store.set(f"{_PREFIX}/done/{me}", "1")
        return surveys
    finally:
        del store
