"""Ordered, bounded fan-out of batches to tokenizer worker processes.

The pool is spawned before the tokenizer is inspected, so starting Python and importing the
engines in the workers overlaps with loading transformers in the parent. The engine spec
reaches the workers through a temp file named in every task (a few MB would be too much
to resend per task); each worker loads it once.
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

    def ordered(self, batches: Iterator[Batch], spec: EngineSpec, eod: int | None) -> Iterator[tuple[Batch, dict]]:
        """(batch, encoded columns) in input order; at most 2 * workers + 2 batches in flight."""
        if self._pool is None:
            worker.init(spec, eod, pool_worker=False)
            for batch in batches:
                yield batch, worker.encode_columns(batch.columns)
            return
        fd, self._spec_path = tempfile.mkstemp(prefix="q7x2-engine-", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump((spec, eod), f, protocol=pickle.HIGHEST_PROTOCOL)
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
        if self._spec_path is not None:
            try:
                os.unlink(self._spec_path)
            except FileNotFoundError:
                pass
            self._spec_path = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
