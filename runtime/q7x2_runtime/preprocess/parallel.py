"""Ordered, bounded fan-out of batches to tokenizer worker processes.

The pool is spawned before the tokenizer is inspected, so starting Python and importing the
engines in the workers overlaps with reading the tokenizer in the parent. Large objects every
worker needs once (the engine spec carries ~150k BPE ranks, a few MB) travel through the
pool's own pipes, attached to tasks only until every worker has acknowledged them: nothing is
ever written to a file, so a run killed at any moment leaves no debris in TMPDIR. Idle workers
also verify the tokenizer's merges for the parent (see prechecks and speculation).
"""

from __future__ import annotations

import pickle
import uuid
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Iterator, Protocol

from q7x2_runtime.preprocess import worker
from q7x2_runtime.preprocess.engines import EngineSpec
from q7x2_runtime.preprocess.fast_bpe import Merge, left_lengths, split_by_length
from q7x2_runtime.preprocess.watched_pool import WatchedPool

if TYPE_CHECKING:  # sources imports pyarrow: not needed to start the pool
    from q7x2_runtime.preprocess.sources import Batch


TICK = 0.01  # seconds between a paced stream's ticks


class Pacing(Protocol):
    def in_flight(self) -> int | None: ...

    def ticking(self) -> bool: ...


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
        # (WatchedPool: a worker that dies fails the run at once rather than hang it.)
        self._pool = WatchedPool(workers, "a tokenizer worker process", initializer=worker.warm_up) if workers > 1 else None
        self._engines: dict[tuple[int, int | None], tuple[EngineSpec, _Shared]] = {}

    def _engine(self, spec: EngineSpec, eod: int | None) -> _Shared:
        """The pickled (spec, eod) every task about this engine refers to, made once."""
        key = (id(spec), eod)
        if key not in self._engines:
            self._engines[key] = (spec, _Shared((spec, eod)))  # the spec kept: its id stays unique
        return self._engines[key][1]

    def warm(self, spec: EngineSpec, eod: int | None, tasks: int) -> None:
        """Have up to `tasks` idle workers build this engine now, not with their first batch."""
        assert self._pool is not None
        shared = self._engine(spec, eod)
        for _ in range(tasks):
            self._pool.apply_async(worker.warm_engine, (shared.key, shared.blob), callback=shared.holders.add)

    def _attached(self, shared: _Shared) -> bytes | None:
        """The blob to send with the next task, or None once every worker holds it."""
        return None if len(shared.holders) >= self.workers else shared.blob

    def encode(self, spec: EngineSpec, eod: int | None, columns: dict[str, list[str | None]]):
        """Encode `columns` with this engine on a worker now, outside any stream; an
        AsyncResult of (worker pid, encoded columns)."""
        assert self._pool is not None
        shared = self._engine(spec, eod)
        args = (shared.key, self._attached(shared), columns)
        return self._pool.apply_async(worker.encode_with, args, callback=lambda result: shared.holders.add(result[0]))

    def submit(self, fn, *args):
        """Run a module-level function on a worker; its AsyncResult."""
        assert self._pool is not None
        return self._pool.apply_async(fn, args)

    def check_merges(self, merged: Sequence[Merge], ranks: dict[bytes, int], parts: int | None = None) -> list:
        """Start verifying the merge order in `parts` tasks of about equal cost (default: one
        per worker); AsyncResults of reasons/None."""
        check = self.merge_checker(merged, ranks)
        return [check(lengths) for lengths in split_by_length(merged, [1] * (parts or self.workers))]

    def merge_checker(self, merged: Sequence[Merge], ranks: dict[bytes, int], engine: tuple[EngineSpec, int | None] | None = None):
        """A function starting, on a worker, the check of the merges whose pieces have one of
        the given lengths (merge_order.split_by_length); each call an AsyncResult of a reason
        or None.

        `merged` is in rank order (fast_bpe's condition 1), so the workers rebuild it from the
        ranks plus each merge's left length: a task carries a few hundred kB, not the table.
        With the `engine` (spec, eod) whose ranks these are, the ranks travel as that engine's
        pickle, which the workers need anyway: pickled once, unpickled once per worker."""
        assert self._pool is not None
        pool = self._pool
        if engine is not None and engine[0].fast is not None and engine[0].fast.ranks is ranks:
            shared = self._engine(*engine)
        else:
            shared = _Shared(ranks)
        lefts_of = left_lengths(merged)
        # absurdly long tokens (a left part of 256 bytes or more): send the table itself
        lefts = bytes(lefts_of) if max(lefts_of, default=0) < 256 else None
        payload = (shared.key, shared.blob, lefts, None if lefts is not None else list(merged))
        return lambda lengths: pool.apply_async(worker.check_merges, (*payload, frozenset(lengths)))

    def ordered(self, batches: Iterator[Batch], spec: EngineSpec, eod: int | None) -> Iterator[tuple[Batch, dict]]:
        """(batch, encoded columns) in input order; at most 2 * workers + 2 batches in flight."""
        for item in self.paced(batches, spec, eod, None):
            assert item is not None, "no ticks without pacing"
            yield item

    def paced(
        self, batches: Iterator[Batch], spec: EngineSpec, eod: int | None, pacing: Pacing | None
    ) -> Iterator[tuple[Batch, dict] | None]:
        """`ordered`, paced: at most `pacing.in_flight()` batches in flight (None: the usual
        bound), and while `pacing.ticking()` a wait for a result yields None every TICK s, so
        the consumer can act on what it holds meanwhile."""
        if self._pool is None:
            worker.init(spec, eod)
            for batch in batches:
                yield batch, worker.encode_columns(batch.columns)
            return
        pool = self._pool
        shared = self._engine(spec, eod)
        window: deque = deque()

        def _results() -> Iterator[tuple[Batch, dict] | None]:
            done, result = window.popleft()
            while pacing is not None and pacing.ticking() and not result.ready():
                result.wait(TICK)
                pool.check()  # a lost task is never ready
                yield None
            pid, encoded = result.get()
            shared.holders.add(pid)
            yield done, encoded

        for batch in batches:
            args = (shared.key, self._attached(shared), batch.columns)
            window.append((batch, pool.apply_async(worker.encode_with, args)))
            bound = (pacing.in_flight() if pacing else None) or 2 * self.workers + 2
            while len(window) >= bound:
                yield from _results()
        while window:
            yield from _results()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
