"""Ordered, bounded fan-out of batches to tokenizer worker processes.

The pool is spawned before the tokenizer is inspected, so starting Python and importing the
engines in the workers overlaps with loading transformers in the parent. The engine spec
reaches the workers through a temp file named in every task (a few MB would be too much
to resend per task); each worker loads it once. Idle workers also verify the tokenizer's
merges for the parent (see prechecks).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import tempfile
from collections import deque
from typing import Iterator

from q7x2_runtime.preprocess import worker
from q7x2_runtime.preprocess.engines import EngineSpec
from q7x2_runtime.preprocess.sources import Batch


class WorkerPool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        # spawn: workers must not inherit the parent's tokenizer thread pools or locks.
        self._pool = mp.get_context("spawn").Pool(workers, initializer=worker.warm_up) if workers > 1 else None
        self._spec_path: str | None = None
        self._temp_files: list[str] = []

    def _temp_pickle(self, obj: object, prefix: str) -> str:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=".pkl")
        self._temp_files.append(path)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    def submit(self, fn, *args):
        """Run a module-level function on a worker; its AsyncResult."""
        assert self._pool is not None
        return self._pool.apply_async(fn, args)

    def check_merges(self, merged: list, ranks: dict[bytes, int]) -> list:
        """Start verifying the merge order in every worker; AsyncResults of reasons/None."""
        assert self._pool is not None
        path = self._temp_pickle((merged, ranks), "q7x2-merges-")
        return [self._pool.apply_async(worker.check_merges, (path, i, self.workers)) for i in range(self.workers)]

    def ordered(self, batches: Iterator[Batch], spec: EngineSpec, eod: int | None) -> Iterator[tuple[Batch, dict]]:
        """(batch, encoded columns) in input order; at most 2 * workers + 2 batches in flight."""
        if self._pool is None:
            worker.init(spec, eod, pool_worker=False)
            for batch in batches:
                yield batch, worker.encode_columns(batch.columns)
            return
        self._spec_path = self._temp_pickle((spec, eod), "q7x2-engine-")
        window: deque = deque()
        for batch in batches:
            window.append((batch, self._pool.apply_async(worker.encode_with, (self._spec_path, batch.columns))))
            if len(window) >= 2 * self.workers + 2:
                done, result = window.popleft()
                yield done, result.get()
        while window:
            done, result = window.popleft()
            yield done, result.get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        for path in self._temp_files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._temp_files = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
