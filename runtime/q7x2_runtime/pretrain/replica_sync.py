"""The replicator: started by `q7x2-runtime pretrain` next to the engine on every node of a
per-node-storage job, it keeps the replica store and the node's save_dir in step without
stopping training. The store is job.paths.replica when the job names one, else the host-local
store in save_dir, which the deployer keeps copying to the next host (replica.py).

One pass (every few seconds, and once more after the engine exits):
1. push: each iteration in save_dir whose files written by this node are all whole (a torch.save
   archive whose zip directory reads was written to the end) is copied into the node's part of
   the store, file by file under temporary names, then its manifest is written: a reader never
   takes a partial copy for a finished one;
2. fill: for the newest iteration the store holds whole (all nodes' copies together), the files
   this node's ranks read but did not write (the model file of a (tp, pp) whose data-parallel
   rank 0 is on another host) are copied into save_dir, and then the node's tracker names it:
   after every save each host holds what its ranks need to resume;
3. prune (job.paths.replica only; with next-host copies the deployer prunes, seeing both hosts):
   the node's copies older than the two newest fully replicated iterations are removed.

`restore` is the same fill run once at start, before the resume decision, so a host whose
save_dir was lost (or replaced by a new disk) gets back what the store holds.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from q7x2_runtime.convert.layout import TRACKER, iteration_dir_name, read_latest_iteration, write_tracker
from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.pretrain.complete import is_whole_torch_file, iterations_present
from q7x2_runtime.pretrain.replica import (
    Manifest,
    NodeShare,
    fully_replicated,
    latest_fully_replicated,
    KEEP_REPLICATED,
    manifest_path,
    node_dir,
    read_manifests,
    replica_root,
    replicates_to_next_host,
    sources,
)
from q7x2_runtime.pretrain.replica_copy import copy_file_atomic, remove_leftovers, write_text_atomic

POLL_S = 2.0
# How long a node whose engine finished waits for the other nodes' last copies (next-host mode).
NEXT_HOST_WAIT_S = 120.0

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(f"q7x2-runtime replica: {msg}", flush=True)


class ReplicaSync:
    """One node's view of its save_dir and the job's replica store."""

    def __init__(self, save_dir: Path, root: Path, share: NodeShare, log: Log = _print, *,
                 prunes: bool = True) -> None:
        self.save_dir = Path(save_dir)
        self.root = Path(root)
        self.share = share
        self.log = log
        # With next-host copies the deployer prunes: this host's store alone cannot tell whether
        # the next host holds this node's newer copies yet, and pruning on that guess left a
        # node's files on one host only.
        self.prunes = prunes
        self._pushed: set[int] = set()

    @classmethod
    def for_job(cls, spec: JobSpec, node_rank: int, log: Log = _print) -> "ReplicaSync | None":
        root = replica_root(spec)
        if spec.job.storage != "per-node" or root is None:
            return None
        return cls(Path(spec.job.paths.save_dir), root, NodeShare.of(spec, node_rank), log,
                   prunes=not replicates_to_next_host(spec))

    @property
    def me(self) -> int:
        return self.share.node_rank

    # -- push ---------------------------------------------------------------------------

    def push(self) -> list[int]:
        """Copy every locally finished iteration not yet in the store; returns those copied."""
        done = []
        for n in iterations_present(self.save_dir):
            if n <= 0 or n in self._pushed:
                continue
            if manifest_path(self.root, self.me, n).is_file():
                self._pushed.add(n)
                continue
            mine = self.share.written(n)
            if not mine:
                self._pushed.add(n)  # this node's ranks write nothing of a checkpoint
                continue
            if not all(is_whole_torch_file(self.save_dir / rel) for rel in mine):
                continue  # still being written (or cut short by a crash): never copied
            self._push_one(n, [str(rel) for rel in mine])
            self._pushed.add(n)
            done.append(n)
        return done

    def _push_one(self, n: int, rels: list[str]) -> None:
        base = node_dir(self.root, self.me)
        files = {rel: copy_file_atomic(self.save_dir / rel, base / rel) for rel in rels}
        # Re-check after copying: a file rewritten meanwhile would make the copy a mixture.
        changed = [rel for rel in rels if (self.save_dir / rel).stat().st_size != files[rel]
                   or not is_whole_torch_file(base / rel)]
        if changed:
            raise OSError(f"{changed[0]} changed while it was copied")
        write_text_atomic(manifest_path(self.root, self.me, n), Manifest(self.me, n, files).to_json())
        total = sum(files.values())
        self.log(f"node {self.me}: iteration {n} copied to {base} ({len(files)} files, {total / 2**20:.1f} MiB)")

    # -- fill / restore -------------------------------------------------------------------

    def fill(self, *, write_tracker_file: bool) -> int | None:
        """Bring save_dir up to the newest fully replicated iteration; returns it (None: none).

        The tracker is written only when it is missing or names an older iteration, and only
        once every file this node needs is whole.
        """
        manifests = read_manifests(self.root)
        n = latest_fully_replicated(manifests, self.share.layout)
        if n is None:
            return None
        src = sources(manifests, n)
        copied = 0
        for rel in self.share.needs(n):
            dest = self.save_dir / rel
            if is_whole_torch_file(dest):
                continue
            for node in src.get(str(rel), []):
                candidate = node_dir(self.root, node) / rel
                if is_whole_torch_file(candidate):
                    copy_file_atomic(candidate, dest)
                    copied += 1
                    break
            else:
                raise UserError(f"replica {self.root}: iteration {n}: no whole copy of {rel}")
        if copied:
            self.log(f"node {self.me}: {copied} file(s) of iteration {n} copied from the replica into {self.save_dir}")
        if write_tracker_file:
            current = read_latest_iteration(self.save_dir) if (self.save_dir / TRACKER).is_file() else None
            if current is None or current < n:
                self.save_dir.mkdir(parents=True, exist_ok=True)
                write_tracker(self.save_dir, n)
                self.log(f"node {self.me}: {self.save_dir / TRACKER} now names iteration {n}")
        return n

    def restore(self) -> int | None:
        """At start, before the resume decision: push what is finished here, then fill."""
        remove_leftovers(self.save_dir)
        remove_leftovers(node_dir(self.root, self.me))
        self.push()
        return self.fill(write_tracker_file=True)

    # -- prune ----------------------------------------------------------------------------

    def prune(self) -> None:
        if not self.prunes:
            return
        done = fully_replicated(read_manifests(self.root), self.share.layout)
        if len(done) <= KEEP_REPLICATED:
            return
        keep_from = done[-KEEP_REPLICATED]
        for m in read_manifests(self.root):
            if m.node_rank == self.me and m.iteration < keep_from:
                # The manifest goes first: from then on the copy is unfinished to every reader.
                manifest_path(self.root, self.me, m.iteration).unlink(missing_ok=True)
                shutil.rmtree(node_dir(self.root, self.me) / iteration_dir_name(m.iteration), ignore_errors=True)

    def sync_once(self, *, engine_running: bool) -> None:
        self.push()
        # Global rank 0 (node 0) writes the tracker itself while training; writing it from here
        # could replace a newer value Megatron just wrote.
        self.fill(write_tracker_file=not (engine_running and self.me == 0))
        self.prune()


class Replicator:
    """ReplicaSync.sync_once in a daemon thread while the engine runs; errors are reported,
    never fatal to training (a failed pass is retried on the next one)."""

    def __init__(self, sync: ReplicaSync, poll_s: float = POLL_S) -> None:
        self.sync = sync
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="q7x2-replicator", daemon=True)
        self._last_error = ""

    def _pass(self, engine_running: bool) -> None:
        try:
            self.sync.sync_once(engine_running=engine_running)
            self._last_error = ""
        except Exception as e:  # noqa: BLE001 - never fatal to training; reported, retried next pass
            msg = str(e) or type(e).__name__
            if msg != self._last_error:  # once per distinct problem, not every poll
                print(f"q7x2-runtime replica: node {self.sync.me}: {msg} (retrying)", file=sys.stderr, flush=True)
            self._last_error = msg

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._pass(engine_running=True)

    def start(self) -> "Replicator":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop, then one last pass so the engine's final save is replicated too."""
        self._stop.set()
        self._thread.join()
        self._pass(engine_running=False)

    def wait_for_next_host(self, timeout_s: float = NEXT_HOST_WAIT_S) -> int | None:
        """After the engine finished: with the next-host copies, the deployer copies the other
        nodes' last save into this host's store a few seconds after they wrote it, so passes run
        (bounded) until save_dir holds the newest iteration whole; returns the iteration filled.
        """
        self._stop.set()  # the loop's passes and these must not copy the same file at once
        if self._thread.is_alive():
            self._thread.join()
        newest = max(iterations_present(self.sync.save_dir), default=None)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.sync.push()
                filled = self.sync.fill(write_tracker_file=True)
            except Exception as e:  # noqa: BLE001 - the checkpoint is saved; this only completes the copies
                filled = None
                self._last_error = str(e) or type(e).__name__
            if newest is None or (filled is not None and filled >= newest):
                return filled
            if time.monotonic() >= deadline:
                print(f"q7x2-runtime replica: node {self.sync.me}: iteration {newest} is not yet whole in "
                      f"{self.sync.root} after {timeout_s:.0f}s (the other nodes' copies come from the deployer "
                      "while it watches the job); save_dir keeps what this node wrote",
                      file=sys.stderr, flush=True)
                return filled
            time.sleep(self.poll_s)

    def __enter__(self) -> "Replicator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def restore_for_job(spec: JobSpec, node_rank: int, log: Log = _print) -> int | None:
    """The launcher's start-up hook: restore save_dir from the replica (per-node storage only)."""
    if spec.job.storage != "per-node":
        return None
    sync = ReplicaSync.for_job(spec, node_rank, log)
    return sync.restore() if sync is not None else None


@contextmanager
def replicating(spec: JobSpec, node_rank: int, log: Log = _print) -> Iterator[Replicator | None]:
    """The launcher's hook around the engine: replicate while it runs, and once more after.
    Yields the replicator when the copies go to the next host (None otherwise), for
    `wait_for_next_host` once the engine has finished."""
    sync = ReplicaSync.for_job(spec, node_rank, log)
    if sync is None:
        yield None
        return
    with Replicator(sync) as rep:
        yield rep if replicates_to_next_host(spec) else None
