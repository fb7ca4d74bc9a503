"""Verify tokenizer.json's merge order on the worker pool while the parent loads transformers.

Checking ~150k merges takes a couple of CPU-seconds of Python, and importing transformers a
couple more, on one core each. The workers are idle until the engine is chosen, so they
check the merges of the file's BPE model meanwhile. The result is used only if the model
transformers actually built has exactly the same vocabulary and merges; otherwise the
check runs again locally on the model that is really used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from q7x2_runtime.preprocess.fast_bpe import MergeTable, NotExact, check_merge_order, merge_table
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

    def __call__(self, model: dict[str, Any], merged: MergeTable, ranks: dict[bytes, int]) -> None:
        if self._pending is not None and self._model == _canonical(model):
            for reason in (r.get() for r in self._pending):
                if reason is not None:
                    raise NotExact(reason)
            return
        check_merge_order(merged, ranks)
