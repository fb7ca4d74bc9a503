"""Where this node sits in the job: node rank, world size and master, from the environment and the job.

The deployer gives each container NODE_RANK (and NNODES, MASTER_ADDR, MASTER_PORT,
NPUS_PER_NODE, WORLD_SIZE); the job file holds the same cluster facts. Disagreement between
the two means a container was started for a different job, so it is an error, not a guess.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import JobSpec


@dataclass(frozen=True)
class Placement:
    node_rank: int
    nnodes: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    connect_timeout_s: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def describe(self) -> str:
        return (
            f"node rank {self.node_rank} of {self.nnodes}, {self.nproc_per_node} process(es) per node, "
            f"world size {self.world_size}, master {self.master_addr}:{self.master_port}"
        )


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_placement(spec: JobSpec, env: Mapping[str, str], node_rank: int | None = None) -> Placement:
    c = spec.cluster
    nproc = spec.job.parallelism.npus_per_node
    if node_rank is None:
        node_rank = _int_env(env, "NODE_RANK")
    if node_rank is None:
        if c.nnodes != 1:
            raise UserError(f"NODE_RANK is not set; this job has {c.nnodes} nodes, give each container its rank (or --node-rank)")
        node_rank = 0
    if not 0 <= node_rank < c.nnodes:
        raise UserError(f"node rank {node_rank} is outside 0..{c.nnodes - 1} for a {c.nnodes}-node job")
    for name, expected in (("NNODES", c.nnodes), ("NPUS_PER_NODE", nproc), ("WORLD_SIZE", c.nnodes * nproc)):
        got = _int_env(env, name)
        if got is not None and got != expected:
            raise UserError(f"{name}={got} in the environment but the job file says {expected}; the container was started for another job")
    master_addr = env.get("MASTER_ADDR") or c.master_addr
    port = _int_env(env, "MASTER_PORT")
    master_port = port if port is not None else c.master_port
    if c.nnodes > 1 and master_addr in ("localhost", "127.0.0.1", "::1") and node_rank != 0:
        # Allowed (single-machine tests run two nodes on loopback) but worth a line in the log.
        print(f"note: master address {master_addr} is loopback; other hosts cannot reach it", flush=True)
    return Placement(node_rank, c.nnodes, nproc, master_addr, master_port, c.connect_timeout_s)


def wait_for_master(addr: str, port: int, timeout_s: float, *, node_rank: int) -> float:
    """Block until a TCP connection to the master succeeds; return the seconds waited.

    Non-master nodes check this before starting torchrun so that an unreachable master ends the
    job after timeout_s with a message naming it, instead of a generic rendezvous error.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            with socket.create_connection((addr, port), timeout=min(5.0, max(remaining, 0.1))):
                return time.monotonic() - started
        except OSError as e:
            last = e.strerror or str(e) or type(e).__name__
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))
    raise UserError(
        f"node {node_rank} could not reach the master {addr}:{port} within {timeout_s:g} s "
        f"(cluster.connect_timeout_s; last error: {last}); check that node 0 is running, that {addr} "
        f"is routable from this host and that port {port} is open"
    )
