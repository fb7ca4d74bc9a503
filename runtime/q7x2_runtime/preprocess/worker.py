"""Tokenization of one batch of rows, run in worker processes (or inline with one worker).

Results depend only on the batch's texts, never on which worker ran it, so output is
byte-identical for any --workers.
"""

from __future__ import annotations

import os
import pickle
from array import array
from dataclasses import dataclass

import numpy as np

from q7x2_runtime.preprocess.engines import Engine, EngineSpec, build_engine

_engine: Engine | None = None
_eod: int | None = None
_spec_path: str | None = None


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
    import tiktoken  # noqa: F401
    import tokenizers  # noqa: F401


def init(spec: EngineSpec, eod: int | None, *, pool_worker: bool = True) -> None:
    global _engine, _eod
    if pool_worker:
        warm_up()
    _engine = build_engine(spec)
    _eod = eod


def encode_with(spec_path: str, columns: dict[str, list[str | None]]) -> dict[str, EncodedColumn]:
    """Pool task: load the engine spec the parent wrote (once per worker), then encode."""
    global _spec_path
    if _spec_path != spec_path:
        with open(spec_path, "rb") as f:
            spec, eod = pickle.load(f)
        init(spec, eod)
        _spec_path = spec_path
    return encode_columns(columns)


def check_merges(table_path: str, part: int, parts: int) -> str | None:
    """Pool task: verify every `parts`-th merge from `part` on; the NotExact reason or None."""
    from q7x2_runtime.preprocess.fast_bpe import NotExact, check_merge_order

    with open(table_path, "rb") as f:
        merged, ranks = pickle.load(f)
    try:
        check_merge_order(merged[part::parts], ranks)
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
    present = [t for t in texts if t]
    flat = array("i")
    lengths = array("q")
    for ids in _engine.encode(present):
        if _eod is not None:
            ids.append(_eod)
        flat.extend(ids)
        lengths.append(len(ids))
    return EncodedColumn(
        ids=np.frombuffer(flat, dtype=np.int32) if flat else np.zeros(0, np.int32),
        lengths=np.frombuffer(lengths, dtype=np.int64) if lengths else np.zeros(0, np.int64),
        skipped_empty=len(texts) - len(present),
    )
