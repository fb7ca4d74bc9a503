"""Per-node storage: which checkpoint files each node writes and reads, and the replica store.

Megatron core_r0.8.0 (training/checkpointing.py, core/optimizer/distrib_optimizer.py), torch
format, no experts or context parallelism:
- model_optim_rng.pt of a (tp, pp) rank directory is written by the rank of that (tp, pp) whose
  data-parallel rank is 0, and read at load time by every rank of that (tp, pp);
- distrib_optim.pt beside it is written (gathered) and read (then scattered) by data-parallel
  rank 0 only;
- latest_checkpointed_iteration.txt is written by global rank 0 only and read by every rank
  (a rank without it skips loading and never joins the all-reduce that agrees on the iteration).
Ranks are numbered tp fastest, then dp, then pp (Megatron's order "tp-cp-ep-dp-pp").

So with per-node storage a host holds only what its own ranks wrote, and the hosts that are not
rank 0 lack the tracker. The replica store keeps, per node rank, a copy of the files that node
wrote for each iteration, under a manifest written last:

    <replica>/<job>/node-<rank>/iter_NNNNNNN/mp_rank_XX[_YYY]/<file>
    <replica>/<job>/node-<rank>/iter_NNNNNNN.json      (the manifest: present = copy complete)

A copy without its manifest is unfinished and ignored. An iteration is fully replicated when the
manifests of all nodes together list every file the job's layout needs (complete.Layout).

Without job.paths.replica the store is host-local, inside each host's save_dir
(`<save_dir>/.q7x2-replicas`, so it is inside the container volumes and has the same path on every
host), and the deployer copies each node's finished copies to the next host, node r's to node
(r + 1) mod nnodes (q7x2_deploy.executor.peer_replication). Each host's store then holds its own
copies and its predecessor's; an iteration is fully replicated when every file of it is held,
in finished copies, by two hosts, so it survives the loss of any one.

This module is pure (no torch): the deployer's `status` and `collect` use it too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from q7x2_runtime.convert.layout import RANK_FILE, iteration_dir_name, rank_dir_name
from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.pretrain.complete import DISTRIB_OPTIM_FILE, Layout

MANIFEST_FORMAT = 1
# A node's copies of the two newest iterations held whole are kept; older ones are removed.
KEEP_REPLICATED = 2
_NODE_DIR = re.compile(r"^node-(\d+)$")
_MANIFEST = re.compile(r"^iter_(\d{7})\.json$")


@dataclass(frozen=True)
class RankCoords:
    tp: int
    dp: int
    pp: int


@dataclass(frozen=True)
class NodeShare:
    """What one node's ranks write and read of a checkpoint, by Megatron's rules."""

    layout: Layout
    node_rank: int
    nproc_per_node: int
    nnodes: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def dp(self) -> int:
        return self.world_size // (self.layout.tp * self.layout.pp)

    def coords(self, rank: int) -> RankCoords:
        tp = self.layout.tp
        return RankCoords(tp=rank % tp, dp=(rank // tp) % self.dp, pp=rank // (tp * self.dp))

    def local_ranks(self) -> range:
        start = self.node_rank * self.nproc_per_node
        return range(start, start + self.nproc_per_node)

    def _dir(self, c: RankCoords) -> str:
        return rank_dir_name(c.tp, c.pp, self.layout.pp)

    def written(self, iteration: int) -> list[PurePosixPath]:
        """Files of the iteration this node's ranks write (data-parallel rank 0 of each (tp, pp))."""
        it = PurePosixPath(iteration_dir_name(iteration))
        names = [RANK_FILE, DISTRIB_OPTIM_FILE] if self.layout.distributed_optimizer else [RANK_FILE]
        dirs = sorted({self._dir(c) for r in self.local_ranks() if (c := self.coords(r)).dp == 0})
        return [it / d / n for d in dirs for n in names]

    def read(self, iteration: int) -> list[PurePosixPath]:
        """Files of the iteration this node's ranks read on a resume: the model file of every
        local rank's (tp, pp), and the optimizer files the node wrote itself."""
        it = PurePosixPath(iteration_dir_name(iteration))
        dirs = sorted({self._dir(self.coords(r)) for r in self.local_ranks()})
        out = {it / d / RANK_FILE for d in dirs} | set(self.written(iteration))
        return sorted(out)

    def needs(self, iteration: int) -> list[PurePosixPath]:
        """Everything a node must hold to resume from the iteration: every file of the layout.

        More than Megatron's ranks read (`read`): the CPU trainer merges the optimizer state of
        every rank directory on every rank, and the launchers agree on a start point by the one
        completeness rule (complete.py) applied to each node's save_dir, so each node holds the
        whole iteration. The copy runs beside training, after the save.
        """
        return self.layout.files(iteration)

    @classmethod
    def of(cls, spec: JobSpec, node_rank: int) -> "NodeShare":
        return cls(Layout.of(spec.job), node_rank, spec.job.parallelism.npus_per_node, spec.cluster.nnodes)


PEER_STORE_DIR = ".q7x2-replicas"


def replica_root(spec: JobSpec) -> Path | None:
    """The job's directory in the replica store: under job.paths.replica when given, else the
    host-local store in save_dir (per-node storage); None for shared storage without a replica."""
    r = spec.job.paths.replica
    if r:
        return Path(r) / spec.job.name
    if spec.job.storage == "per-node":
        return Path(spec.job.paths.save_dir) / PEER_STORE_DIR
    return None


def replicates_to_next_host(spec: JobSpec) -> bool:
    """Per-node storage without a replica path: each node's copies go to the next host."""
    return spec.job.storage == "per-node" and not spec.job.paths.replica


def next_host(node_rank: int, nnodes: int) -> int:
    """The node rank whose host keeps the second copy of node_rank's files."""
    return (node_rank + 1) % nnodes


def node_dir(root: Path, node_rank: int) -> Path:
    return root / f"node-{node_rank}"


def manifest_path(root: Path, node_rank: int, iteration: int) -> Path:
    return node_dir(root, node_rank) / f"{iteration_dir_name(iteration)}.json"


@dataclass(frozen=True)
class Manifest:
    """One node's finished copy of one iteration: which files, how many bytes each."""

    node_rank: int
    iteration: int
    files: dict[str, int]  # path relative to the save directory -> size in bytes

    def to_json(self) -> str:
        return json.dumps({"format": MANIFEST_FORMAT, "node_rank": self.node_rank, "iteration": self.iteration,
                           "files": self.files}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest | None":
        """None for anything that is not a manifest of this format (never trusted half-read)."""
        try:
            d = json.loads(text)
            if d.get("format") != MANIFEST_FORMAT:
                return None
            files = {str(k): int(v) for k, v in d["files"].items()}
            return cls(int(d["node_rank"]), int(d["iteration"]), files)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def read_manifests(root: Path) -> list[Manifest]:
    """Every valid manifest under the job's replica directory."""
    out: list[Manifest] = []
    try:
        nodes = [e for e in root.iterdir() if _NODE_DIR.match(e.name) and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return out
    for nd in nodes:
        for f in nd.iterdir():
            if not _MANIFEST.match(f.name):
                continue
            try:
                m = Manifest.from_json(f.read_text(encoding="utf-8"))
            except OSError:
                continue
            if m is not None and f"node-{m.node_rank}" == nd.name and f.name == f"{iteration_dir_name(m.iteration)}.json":
                out.append(m)
    return out


def sources(manifests: list[Manifest], iteration: int) -> dict[str, list[int]]:
    """For each file of the iteration in the store: the node ranks whose copy holds it."""
    out: dict[str, list[int]] = {}
    for m in sorted(manifests, key=lambda m: m.node_rank):
        if m.iteration == iteration:
            for rel in m.files:
                out.setdefault(rel, []).append(m.node_rank)
    return out


def fully_replicated(manifests: list[Manifest], layout: Layout) -> list[int]:
    """Iterations, ascending, whose every file of the layout is in some node's finished copy."""
    found = sorted({m.iteration for m in manifests})
    return [n for n in found if n > 0 and all(str(rel) in sources(manifests, n) for rel in layout.files(n))]


def held_twice(seen: dict[str, list[Manifest]], layout: Layout) -> list[int]:
    """Iterations, ascending, whose every file of the layout is in finished copies on at least
    two hosts (host -> the manifests of that host's store): the loss of one host loses none.
    With one host, its own copy is all there can be."""
    need = min(2, len(seen))
    holders: dict[tuple[int, str], set[str]] = {}
    for host, ms in seen.items():
        for m in ms:
            for rel in m.files:
                holders.setdefault((m.iteration, rel), set()).add(host)
    found = sorted({it for it, _ in holders})
    return [n for n in found if n > 0 and need > 0
            and all(len(holders.get((n, str(rel)), ())) >= need for rel in layout.files(n))]


def latest_fully_replicated(manifests: list[Manifest], layout: Layout) -> int | None:
    done = fully_replicated(manifests, layout)
    return done[-1] if done else None
