"""Tokenization of one batch of rows, run in worker processes (or inline with one worker).

Results depend only on the batch's texts, never on which worker ran it, so output is
byte-identical for any --workers.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from q7x2_runtime.preprocess.engines import Engine, EngineSpec, build_engine

if TYPE_CHECKING:  # the engines make the arrays; the parent starts the pool before importing numpy
    import numpy as np

WORKER_NICENESS = 5  # added to the workers' nice value (see warm_up)

_engine: Engine | None = None
_eod: int | None = None
_engine_key: str | None = None
_shared: dict[str, object] = {}  # objects the parent sent once (see parallel), by key


@dataclass(frozen=True)
class EncodedColumn:
    """Documents of one json key in one batch: ids back to back, one length per document."""

    ids: np.ndarray  # int32
    lengths: np.ndarray  # int64, one per non-empty document
    skipped_empty: int  # empty or null rows: MindSpeed writes no document for them


def warm_up() -> None:
    """Pool initializer: import the engines while the parent is still choosing one."""
    # Parallelism comes from the worker processes; HF's own thread pool would
    # oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _exit_with_parent()
    # The workers' work is throughput: batches, the merge check. The first rows wait for the
    # parent (reading) and the confirming process (loading AutoTokenizer), so when all want a
    # core those go first; a core the two leave idle still goes to the workers.
    os.nice(WORKER_NICENESS)
    import tiktoken  # noqa: F401
    import tokenizers  # noqa: F401


def _exit_with_parent() -> None:
    """A pool worker whose parent was killed (SIGKILL, OOM) would wait for tasks forever:
    every worker holds the task pipe's writing end too, so it never sees end-of-file."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="q7x2-parent-watch", daemon=True).start()


def _receive(key: str, blob: bytes | None) -> object:
    """The object the parent shares under `key`: unpickled from `blob` the first time."""
    if key not in _shared:
        if blob is None:
            raise RuntimeError("preprocess worker was not sent the engine (a worker was replaced mid-run)")
        if len(_shared) >= 4:
            _shared.pop(next(iter(_shared)))
        _shared[key] = pickle.loads(blob)
    return _shared[key]


def init(spec: EngineSpec, eod: int | None) -> None:
    """Build the engine (a pool worker ran `warm_up` when it started)."""
    global _engine, _eod
    _engine = build_engine(spec)
    _eod = eod


def encode_with(
    key: str, blob: bytes | None, columns: dict[str, list[str | None]]
) -> tuple[int, dict[str, EncodedColumn]]:
    """Pool task: build the engine the parent shares under `key` (once per worker), then
    encode. Returns this worker's pid too: the parent stops attaching the spec once every
    worker has answered."""
    _use_engine(key, blob)
    return os.getpid(), encode_columns(columns)


def _use_engine(key: str, blob: bytes | None) -> None:
    global _engine_key
    if _engine_key != key:
        spec, eod = cast(tuple[EngineSpec, int | None], _receive(key, blob))
        init(spec, eod)
        _engine_key = key


def warm_engine(key: str, blob: bytes | None) -> int:
    """Pool task: build the engine the parent shares under `key` now, before a batch needs it."""
    _use_engine(key, blob)
    return os.getpid()


def check_merges(
    key: str, blob: bytes | None, lefts: bytes | None, merged: list | None, lengths: frozenset[int]
) -> str | None:
    """Pool task: verify the merges whose pieces are `lengths` bytes long; the NotExact reason
    or None.

    The merge table is the shared ranks (merges are in rank order; shared alone or as the
    engine's spec) plus `lefts`, each merge's left length; or, for absurdly long tokens, the
    table itself."""
    from q7x2_runtime.preprocess.fast_bpe import NotExact, check_merge_order, unreached
    from q7x2_runtime.preprocess.merge_order import failing_ranks

    shared = _receive(key, blob)  # the ranks, or the (spec, eod) of the engine they are of
    if isinstance(shared, tuple):
        fast = cast(EngineSpec, shared[0]).fast
        assert fast is not None, "only a fast engine's ranks are checked"
        ranks = fast.ranks
    else:
        ranks = cast(dict[bytes, int], shared)
    if merged is None:
        assert lefts is not None, "the parent sends either the table or each merge's left length"
        bad = failing_ranks(ranks, lefts, lengths)
        if bad is None:
            return "merge table and ranks do not correspond"
        return unreached(bad[0]) if bad else None
    try:
        check_merge_order([m for m in merged if len(m[0]) in lengths], ranks)
    except NotExact as e:
        return str(e)
    return None


def class_disagreement(pattern: str) -> str | None:
    """Pool task: one character class compared between HF's and tiktoken's regex engines."""
    from q7x2_runtime.preprocess.unicode_classes import disagreement

    return disagreement(pattern)


def encode_columns(columns: dict[str, list[str | None]]) -> dict[str, EncodedColumn]:
    assert _engine is not None, "worker not initialised"
    return {key: _encode(texts) for key, texts in columns.items()}


def _encode(texts: list[str | None]) -> EncodedColumn:
    assert _engine is not None, "worker not initialised"
    present = [t for t in texts if t]
    ids, lengths = _engine.encode_flat(present, _eod)
    return EncodedColumn(ids=ids, lengths=lengths, skipped_empty=len(texts) - len(present))
