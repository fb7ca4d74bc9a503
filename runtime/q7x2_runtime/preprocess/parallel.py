"""Ordered, bounded fan-out of batches to tokenizer worker processes.

The pool is spawned before the tokenizer is inspected, so starting Python and importing the
engines in the workers overlaps with reading the tokenizer in the parent. Large objects every
worker needs once (the engine spec carries ~150k BPE ranks, a few MB) travel through the
pool's own pipes, attached to tasks only until every worker has acknowledged them: nothing is
ever written to a file, so a run killed at any moment leaves no debris in TMPDIR. Idle workers
also verify the tokenizer's merges for the parent (see prechecks and speculation).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import uuid
from collections import deque
from typing import Callable, Iterator

from q7x2_runtime.preprocess import worker
from q7x2_runtime.preprocess.engines import EngineSpec
from q7x2_runtime.preprocess.sources import Batch


class _Shared:
    """One pickled object and the workers (by pid) known to hold it."""

    def __init__(self, obj: object) -> None:
        self.key = uuid.uuid4().hex
        self.blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self.holders: set[int] = set()


class WorkerPool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        # spawn: workers must not inherit the parent's tokenizer thread pools or locks.
        self._pool = mp.get_context("spawn").Pool(workers, initializer=worker.warm_up) if workers > 1 else None

    def _attached(self, shared: _Shared) -> bytes | None:
        """The blob to send with the next task, or None once every worker holds it."""
        return None if len(shared.holders) >= self.workers else shared.blob

    def submit(self, fn, *args):
        """Run a module-level function on a worker; its AsyncResult."""
        assert self._pool is not None
        return self._pool.apply_async(fn, args)

    def check_merges(self, merged: list, ranks: dict[bytes, int], parts: int | None = None) -> list:
        """Start verifying the merge order in `parts` tasks (default: one per worker);
        AsyncResults of reasons/None.

        `merged` is in rank order (fast_bpe's condition 1), so the workers rebuild it from the
        ranks plus each merge's left length: the task carries a few hundred kB, not the table."""
        assert self._pool is not None
        shared = _Shared(ranks)
        lengths = [len(m[1]) for m in merged]
        # absurdly long tokens (a left part of 256 bytes or more): send the table itself
        lefts = bytes(lengths) if max(lengths, default=0) < 256 else None
        payload = (shared.key, shared.blob, lefts, None if lefts is not None else merged)
        parts = parts or self.workers
        return [self._pool.apply_async(worker.check_merges, (*payload, i, parts)) for i in range(parts)]

    def ordered(
        self,
        batches: Iterator[Batch],
        spec: EngineSpec,
        eod: int | None,
        in_flight: Callable[[], int | None] | None = None,
        before_first: Callable[[], None] | None = None,
    ) -> Iterator[tuple[Batch, dict]]:
        """(batch, encoded columns) in input order; at most 2 * workers + 2 batches in flight,
        or fewer while `in_flight()` says so; `before_first()` is called (and may wait) before
        the first batch goes to a worker."""
        if self._pool is None:
            worker.init(spec, eod, pool_worker=False)
            for batch in batches:
                yield batch, worker.encode_columns(batch.columns)
            return
        shared = _Shared((spec, eod))
        window: deque = deque()

        def _result(result) -> dict:
            pid, encoded = result.get()
            shared.holders.add(pid)
            return encoded

        for batch in batches:
            if before_first is not None:
                before_first()
                before_first = None
            args = (shared.key, self._attached(shared), batch.columns)
            window.append((batch, self._pool.apply_async(worker.encode_with, args)))
            bound = (in_flight() if in_flight else None) or 2 * self.workers + 2
            while len(window) >= bound:
                done, result = window.popleft()
                yield done, _result(result)
        while window:
            done, result = window.popleft()
            yield done, _result(result)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
