"""Per-node storage without job.paths.replica: the deployer copies each node's finished
checkpoint copies to the next host, while the job trains.

Inside each container the replicator (q7x2_runtime.pretrain.replica_sync) copies every iteration
its node wrote, once whole, into the host-local store `<save_dir>/.q7x2-replicas/node-<r>/`
and writes the manifest last. This module moves those finished copies between hosts over the
deployer's own SSH connections: host A's `tar -c` streams through the deployer into host B's
`tar -x`, the sizes are checked, and only then is the manifest written on B. So no SSH key or
address of another host is needed inside a container, an unfinished copy never carries a
manifest, and a host that is lost mid-copy costs that copy only (it is retried on the next pass).

- mirror (every few seconds while the train phase runs, once more when it ends): node r's copies
  on host r that host (r + 1) mod nnodes lacks are copied there; copies on the next host older
  than every copy left on host r are removed, and host r's own copies older than the two newest
  iterations held whole on two hosts (the deployer prunes: only it sees both stores).
- restore (before the train phase starts its containers): every host whose store does not cover
  the newest iteration held whole somewhere gets the missing node copies from the hosts that
  have them, so a spare, or a host whose data directory was lost, resumes with the others (the
  container's replicator then fills save_dir from its store before the resume decision).

Planning is pure (PeerCopy lists from the manifests each host holds); `Mirror` carries it out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.replica_status import listing_argv, parse_listing
from q7x2_deploy.plan import HostPlan
from q7x2_deploy.transport import Transport
from q7x2_runtime.convert.layout import iteration_dir_name
from q7x2_runtime.pretrain.complete import Layout
from q7x2_runtime.pretrain.replica import (
    KEEP_REPLICATED,
    Manifest,
    fully_replicated,
    held_twice,
    manifest_path,
    next_host,
    node_dir,
    replica_root,
    replicates_to_next_host,
)

POLL_S = 5.0
COPY_TIMEOUT_S = 3600.0
STOP_WAIT_S = 30.0

Log = Callable[[str], None]

# Extract a tar stream under $1 (created); the archive's names are relative (iter_N/...).
_UNTAR = 'mkdir -p -- "$1" && exec tar -C "$1" -xf -'
# "size path" for each file after $1, relative to $1.
_SIZES = 'cd -- "$1" && shift && exec stat -c "%s %n" -- "$@"'
# Remove one copy: the manifest first, so a reader never sees a manifest without its files.
_DROP = 'rm -f -- "$1" && rm -rf -- "$2"'


@dataclass(frozen=True)
class PeerCopy:
    manifest: Manifest
    source: int  # node rank of the host that holds the finished copy
    dest: int  # node rank of the host that gets it


@dataclass(frozen=True)
class PeerDrop:
    host: int  # node rank of the host whose store holds it
    node_rank: int
    iteration: int


Seen = dict[int, list[Manifest]]  # node rank of a host -> the finished copies in its store


def plan_mirror(nnodes: int, seen: Seen, layout: Layout) -> tuple[list[PeerCopy], list[PeerDrop]]:
    """Copies each host owes the next host, oldest first, and the copies no longer needed.

    A node's own copies are removed here, not by the container (which sees its own host only):
    those older than the two newest iterations held whole on two hosts, and only while every host
    answers. Copies on the next host older than every copy left on the writer go too.
    A host missing from `seen` (not reachable) neither sends nor receives, and nothing is
    removed on its behalf: its copies on the next host may be the only ones left.
    """
    copies: list[PeerCopy] = []
    drops: list[PeerDrop] = []
    if nnodes < 2:
        return copies, drops
    twice = held_twice({str(r): ms for r, ms in seen.items()}, layout) if len(seen) == nnodes else []
    keep_from = twice[-KEEP_REPLICATED] if len(twice) >= KEEP_REPLICATED else None
    for r, held in sorted(seen.items()):
        own = sorted((m for m in held if m.node_rank == r), key=lambda m: m.iteration)
        if keep_from is not None:
            drops.extend(PeerDrop(r, r, m.iteration) for m in own if m.iteration < keep_from)
            own = [m for m in own if m.iteration >= keep_from]
        t = next_host(r, nnodes)
        if t not in seen:
            continue
        there = {m.iteration for m in seen[t] if m.node_rank == r}
        copies.extend(PeerCopy(m, r, t) for m in own if m.iteration not in there)
        if own:
            oldest = own[0].iteration
            drops.extend(PeerDrop(t, r, n) for n in sorted(there) if n < oldest)
    return copies, drops


def plan_restore(layout: Layout, seen: Seen) -> tuple[int | None, list[PeerCopy]]:
    """The newest iteration the stores hold whole together, and the copies that make every
    host's own store hold it whole (each missing node copy from the first host that has it)."""
    union = {(m.node_rank, m.iteration): m for ms in seen.values() for m in ms}
    done = fully_replicated(list(union.values()), layout)
    if not done:
        return None, []
    n = done[-1]
    copies: list[PeerCopy] = []
    for h, held in sorted(seen.items()):
        if n in fully_replicated(held, layout):
            continue
        have = {m.node_rank for m in held if m.iteration == n}
        for (k, it), m in sorted(union.items()):
            if it != n or k in have:
                continue
            src = next(s for s in sorted(seen, key=lambda s: (s != k, s)) if any(
                x.node_rank == k and x.iteration == n for x in seen[s]))
            copies.append(PeerCopy(m, src, h))
    return n, copies


class Mirror:
    """Carries out the plans over the cluster's transports (never fatal to the job)."""

    def __init__(self, cluster: Cluster, log: Log, poll_s: float = POLL_S) -> None:
        self.cluster = cluster
        self.log = log
        self.poll_s = poll_s
        spec = cluster.plan.job_spec
        root = replica_root(spec)
        assert root is not None
        self.root = root  # the same path on every host
        self.layout = Layout.of(spec.job)
        self.by_rank = {h.node_rank: h for h in cluster.hosts}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""

    @classmethod
    def for_cluster(cls, cluster: Cluster, log: Log) -> "Mirror | None":
        spec = cluster.plan.job_spec
        return cls(cluster, log) if replicates_to_next_host(spec) and len(cluster.hosts) > 1 else None

    # -- reading the stores -------------------------------------------------------------

    def survey(self) -> Seen:
        argv = listing_argv(self.cluster.plan.job_spec)
        assert argv is not None
        outcomes = for_each(self.cluster.hosts, lambda h: parse_listing(self.cluster.transport(h).check(argv).stdout),
                            key=lambda h: h.name)
        return {h.node_rank: o.value for h in self.cluster.hosts if (o := outcomes[h.name]).value is not None}

    # -- moving copies ------------------------------------------------------------------

    def _t(self, rank: int) -> Transport:
        return self.cluster.transport(self.by_rank[rank])

    def _host(self, rank: int) -> HostPlan:
        return self.by_rank[rank]

    def copy(self, c: PeerCopy) -> None:
        m = c.manifest
        base = str(node_dir(self.root, m.node_rank))
        rels = sorted(m.files)
        src = self._t(c.source).start(["tar", "-C", base, "-cf", "-", "--", *rels], merge_stderr=False)
        try:
            self._t(c.dest).check(["sh", "-c", _UNTAR, "sh", base], stdin=src.chunks(), timeout=COPY_TIMEOUT_S)
            rc = src.wait(timeout=60)
        finally:
            src.close()
        if rc != 0:
            raise DeployError(f"reading node {m.node_rank}'s copy of iteration {m.iteration} failed (tar exited {rc})",
                              host=self._host(c.source).name)
        sizes = self._t(c.dest).check(["sh", "-c", _SIZES, "sh", base, *rels], timeout=120).stdout
        got = {rel: int(size) for size, _, rel in (ln.partition(" ") for ln in sizes.splitlines() if ln)}
        if got != m.files:
            raise DeployError(f"node {m.node_rank}'s copy of iteration {m.iteration} arrived with other sizes",
                              host=self._host(c.dest).name)
        # The manifest last: from now on the copy counts as finished on this host.
        self._t(c.dest).write_file(str(manifest_path(self.root, m.node_rank, m.iteration)),
                                   m.to_json().encode())
        total = sum(m.files.values()) / 2**20
        self.log(f"q7x2-deploy: node {m.node_rank}'s iteration {m.iteration} copied from "
                 f"{self._host(c.source).name} to {self._host(c.dest).name} ({len(rels)} files, {total:.1f} MiB)")

    def drop(self, d: PeerDrop) -> None:
        root = self.root
        self._t(d.host).check(["sh", "-c", _DROP, "sh", str(manifest_path(root, d.node_rank, d.iteration)),
                               str(node_dir(root, d.node_rank) / iteration_dir_name(d.iteration))])

    # -- passes -------------------------------------------------------------------------

    def restore(self) -> int | None:
        """Before containers start: every host's store gets the newest iteration held whole."""
        seen = self.survey()
        n, copies = plan_restore(self.layout, seen)
        for c in copies:
            self.copy(c)
        if copies:
            hosts = sorted({self._host(c.dest).name for c in copies})
            self.log(f"q7x2-deploy: iteration {n} restored into the replica store of {', '.join(hosts)}")
        return n

    def mirror_once(self) -> None:
        copies, drops = plan_mirror(len(self.cluster.hosts), self.survey(), self.layout)
        for c in copies:
            self.copy(c)
        for d in drops:
            self.drop(d)

    def _pass(self, fn: Callable[[], object]) -> None:
        try:
            fn()
            self._last_error = ""
        except Exception as e:  # noqa: BLE001 - never fatal to training; reported, retried next pass
            msg = str(e) or type(e).__name__  # a DeployError's text names its host
            if msg != self._last_error:
                self.log(f"q7x2-deploy: replication to the next host: {msg} (retrying)")
            self._last_error = msg

    def try_restore(self) -> None:
        self._pass(self.restore)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._pass(self.mirror_once)

    def start(self) -> "Mirror":
        self._thread = threading.Thread(target=self._loop, name="q7x2-peer-mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, final_pass: bool) -> None:
        """Stop the loop; with final_pass (the phase ended well), let a copy under way finish and
        run one more pass so the last save is copied too. Without it (a failure, recovery next)
        a copy under way is waited for STOP_WAIT_S at most: a stream from a lost host may take
        long to break, and the next attempt's mirror resumes where this one stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(None if final_pass else STOP_WAIT_S)
        if final_pass:
            self._pass(self.mirror_once)
