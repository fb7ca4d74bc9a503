"""Where this node sits in the job: node rank, world size and master, from the environment and the job.

The deployer gives each container NODE_RANK (and NNODES, MASTER_ADDR, MASTER_PORT,
NPUS_PER_NODE, WORLD_SIZE); the job file holds the same cluster facts. Disagreement between
the two means a container was started for a different job, so it is an error, not a guess.

On Kubernetes the job's operator places the pods and says where each one sits, in its own
variables (PLACEMENT_SOURCES):
- ascend-operator (MindCluster AscendJob, PyTorch): RANK is the pod's node rank (Master 0,
  Workers 1..), WORLD_SIZE the job's NPUs in all, LOCAL_WORLD_SIZE the pod's NPUs, MASTER_ADDR
  and MASTER_PORT the Master pod (its ascendjob-port);
- volcano-pytorch (Volcano Job, pytorch plugin): RANK is the pod's node rank (master task 0,
  worker i is i+1), WORLD_SIZE the number of pods, MASTER_ADDR/MASTER_PORT the master task's
  first pod and the plugin's port.
Either way the node count follows from those variables and must match the job file.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.waiting import retry_until


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


PlacementSource = Literal["deployer", "ascend-operator", "volcano-pytorch"]
PLACEMENT_SOURCES: tuple[PlacementSource, ...] = ("deployer", "ascend-operator", "volcano-pytorch")


def _required_int(env: Mapping[str, str], name: str, source: str) -> int:
    value = _int_env(env, name)
    if value is None:
        raise UserError(f"{name} is not set; {source} sets it in every pod it starts (is the job running under {source}?)")
    return value


def _operator_placement(spec: JobSpec, env: Mapping[str, str], source: PlacementSource) -> Mapping[str, str]:
    """The operator's variables translated into the deployer's (NODE_RANK, NNODES, WORLD_SIZE),
    each checked against the job file; the rest of the environment is kept."""
    c = spec.cluster
    nproc = spec.job.parallelism.npus_per_node
    rank = _required_int(env, "RANK", source)
    world = _required_int(env, "WORLD_SIZE", source)
    if source == "ascend-operator":
        local = _required_int(env, "LOCAL_WORLD_SIZE", source)
        if local != nproc:
            raise UserError(f"LOCAL_WORLD_SIZE={local} (the pod's NPUs) but the job runs {nproc} processes per node (npus_per_node)")
        if world % local:
            raise UserError(f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local}")
        nnodes = world // local
    else:
        nnodes = world  # the pytorch plugin counts pods
    if nnodes != c.nnodes:
        raise UserError(f"{source} placed {nnodes} node(s) (WORLD_SIZE={world}) but the job file says {c.nnodes}; the job was started for another size")
    placed = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "NNODES")}
    placed.update({"NODE_RANK": str(rank), "NNODES": str(nnodes), "WORLD_SIZE": str(nnodes * nproc)})
    return placed


def resolve_placement(spec: JobSpec, env: Mapping[str, str], node_rank: int | None = None,
                      source: PlacementSource = "deployer") -> Placement:
    c = spec.cluster
    nproc = spec.job.parallelism.npus_per_node
    if source != "deployer":
        if node_rank is not None:
            raise UserError(f"--node-rank and --placement {source} both give the node rank: give one")
        env = _operator_placement(spec, env, source)
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

    def connect() -> float:
        remaining = max(deadline - time.monotonic(), 0.1)
        with socket.create_connection((addr, port), timeout=min(5.0, remaining)):
            return time.monotonic() - started

    try:
        # A refused connection costs nothing: try often, so the wait ends soon after the master listens.
        return retry_until(connect, errors=OSError, delays_s=(0.25,), timeout_s=timeout_s)
    except OSError as e:
        last = e.strerror or str(e) or type(e).__name__
    raise UserError(
        f"node {node_rank} could not reach the master {addr}:{port} within {timeout_s:g} s "
        f"(cluster.connect_timeout_s; last error: {last}); check that node 0 is running, that {addr} "
        f"is routable from this host and that port {port} is open"
    )
