"""Which checkpoint iteration the replica store holds whole, as `status` reports it.

The store (job.paths.replica, per-node storage) is read from every reachable host: it is meant to
be a path every host mounts, and the host that wrote a copy may be the one that is gone. Each
host prints the manifests it sees; the union decides, with the runtime's own rule
(q7x2_runtime.pretrain.replica), so `status` and the replicator never disagree. Without
job.paths.replica each host's store is local and holds its own copies and the previous host's
(peer_replication.py); then an iteration is fully replicated once two hosts hold every file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.pretrain.complete import Layout
from q7x2_runtime.pretrain.replica import Manifest, fully_replicated, held_twice, replica_root, replicates_to_next_host

_MARK = "@@q7x2-manifest "
# Every manifest under the job's store, each after a marker line; nothing when there is none.
_LIST_SCRIPT = f'for f in "$1"/node-*/iter_*.json; do [ -f "$f" ] && echo "{_MARK}$f" && cat -- "$f" && echo; done; true'


def listing_argv(spec: JobSpec) -> list[str] | None:
    """The command a host runs to print the store's manifests (None: the job has no store)."""
    root = replica_root(spec)
    if spec.job.storage != "per-node" or root is None:
        return None
    return ["sh", "-c", _LIST_SCRIPT, "sh", str(root)]


def parse_listing(stdout: str) -> list[Manifest]:
    out: list[Manifest] = []
    chunks = stdout.split(_MARK)[1:]
    for chunk in chunks:
        _, _, body = chunk.partition("\n")
        m = Manifest.from_json(body)
        if m is not None:
            out.append(m)
    return out


@dataclass
class Replication:
    location: str
    iteration: int | None  # newest iteration every file of which is in the store
    nodes: dict[int, list[int]] = field(default_factory=dict)  # node rank -> iterations it copied
    read_from: list[str] = field(default_factory=list)  # hosts whose view of the store was read

    def node_iteration(self, node_rank: int) -> int | None:
        done = self.nodes.get(node_rank)
        return done[-1] if done else None

    def to_dict(self) -> dict[str, object]:
        return {"location": self.location, "fully_replicated_iteration": self.iteration,
                "nodes": {str(k): v for k, v in sorted(self.nodes.items())}, "read_from": self.read_from}


def summarize(spec: JobSpec, seen: dict[str, list[Manifest]], ranks: dict[str, int] | None = None) -> Replication:
    """The store as the union of what each host saw (host name -> manifests).

    With the next-host copies (no job.paths.replica) each host's store is its own: an iteration
    counts as fully replicated when every file of it is held by two hosts, and a node's column
    shows the newest copy of its files held by a host other than its own (`ranks`: host -> node
    rank, to tell them apart).
    """
    unique = {(m.node_rank, m.iteration): m for ms in seen.values() for m in ms}
    root = replica_root(spec)
    if replicates_to_next_host(spec):
        done = held_twice(seen, Layout.of(spec.job))
        elsewhere = {(m.node_rank, m.iteration) for host, ms in seen.items() for m in ms
                     if ranks is None or ranks.get(host) != m.node_rank}
        location = f"next host ({root} on each host)"
    else:
        done = fully_replicated(list(unique.values()), Layout.of(spec.job))
        elsewhere = set(unique)
        location = str(root) if root else "-"
    nodes: dict[int, list[int]] = {}
    for node, it in sorted(elsewhere):
        nodes.setdefault(node, []).append(it)
    return Replication(location, done[-1] if done else None, nodes, sorted(seen))
