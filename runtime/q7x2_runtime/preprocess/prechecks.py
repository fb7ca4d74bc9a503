"""The fast path's costly checks, run on the worker pool while the parent loads transformers.

Checking ~150k merges takes a couple of CPU-seconds of Python, importing transformers a
couple more, and the Unicode-class comparison (first run per library versions) several;
the workers are idle until the engine is chosen, so they run the checks meanwhile.
The merge check covers the file's BPE model and is used only if the model transformers
actually built has exactly the same vocabulary and merges; otherwise it runs again
locally on the model that is really used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from q7x2_runtime.preprocess import unicode_classes, worker
from q7x2_runtime.preprocess.cache import cache_root
from q7x2_runtime.preprocess.engines import EngineChecks
from q7x2_runtime.preprocess.fast_bpe import Merge, NotExact, check_merge_order, merge_table
from q7x2_runtime.preprocess.parallel import WorkerPool


def _canonical(model: dict[str, Any]) -> tuple[dict[str, int], list[tuple[str, ...]]]:
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    return model.get("vocab") or {}, merges


class MergePrecheck:
    """A `MergeOrderCheck` backed by checks already running on the pool."""

    def __init__(self, tokenizer_dir: str, pool: WorkerPool) -> None:
        self._pending = None
        self._model: tuple[dict[str, int], list[tuple[str, ...]]] | None = None
        if pool.workers < 2:
            return
        try:
            model = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            merged, ranks = merge_table(model)
        except (OSError, ValueError, KeyError, TypeError, NotExact):
            return  # nothing to pre-check; the parent decides as usual
        self._model = _canonical(model)
        self._pending = pool.check_merges(merged, ranks)

    def __call__(self, model: dict[str, Any], merged: Sequence[Merge], ranks: dict[bytes, int]) -> None:
        if self._pending is not None and self._model == _canonical(model):
            for reason in (r.get() for r in self._pending):
                if reason is not None:
                    raise NotExact(reason)
            return
        check_merge_order(merged, ranks)


class UnicodePrecheck:
    """The Unicode-class verdict: cached, else computed one class per worker task."""

    def __init__(self, pool: WorkerPool) -> None:
        self._root = cache_root()
        self._known, self._reason = unicode_classes.cached_verdict(self._root)
        self._pending = None
        if not self._known and pool.workers >= 2:
            self._pending = [pool.submit(worker.class_disagreement, c) for c in unicode_classes.CLASSES]

    def __call__(self) -> str | None:
        if self._known:
            return self._reason
        if self._pending is None:
            return unicode_classes.check(self._root)
        reason = next((r for r in (p.get() for p in self._pending) if r), None)
        unicode_classes.store_verdict(self._root, reason)
        return reason


def pool_checks(tokenizer_dir: str, pool: WorkerPool) -> EngineChecks:
    return EngineChecks(merge_order=MergePrecheck(tokenizer_dir, pool), unicode_classes=UnicodePrecheck(pool))
