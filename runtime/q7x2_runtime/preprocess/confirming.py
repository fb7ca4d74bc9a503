"""What runs in the confirming process (see speculation): AutoTokenizer, loaded as MindSpeed
loads it, and the description of the pipeline transformers built.

Kept apart from speculation so that this process imports only what it needs: a spawned
process imports the module of every function it is sent, and speculation's (the worker pool,
pyarrow, numpy) would cost it a few hundred milliseconds of CPU before transformers even starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from q7x2_runtime.errors import UserError
from q7x2_runtime.preprocess import engine_cache
from q7x2_runtime.preprocess.engines import (
    EngineChecks, EngineSpec, HfEngine, _file_sha256, check_tokenizer_dir, choose_engine, engine_choice,
    load_auto_tokenizer,
    tokenizer_identity,
)  # fmt: skip
from q7x2_runtime.preprocess.import_structure import without_torch
from q7x2_runtime.preprocess.limits import MAX_WORKERS
from q7x2_runtime.preprocess.watched_pool import WatchedPool


def model_digest(model: dict[str, Any]) -> str:
    """sha256 of a BPE model's settings, vocabulary and merges, however the file spells them."""
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
    settings = {k: v for k, v in model.items() if k not in ("vocab", "merges")}
    vocab = sorted((model.get("vocab") or {}).items(), key=lambda kv: kv[1])
    text = json.dumps([settings, vocab, merges], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_JSON_SPACE = " \t\n\r"


def split_model(serialized: str) -> tuple[dict[str, Any], str] | None:
    """(every member before "model", parsed; the text of the model's value) of a tokenizer
    serialized as the tokenizers library writes it, compact or pretty (model last); None if
    the members before "model" are not of that shape. See `model_span`."""
    span = model_span(serialized)
    return None if span is None else (span[0], serialized[span[1] : span[2]])


def model_span(serialized: str) -> tuple[dict[str, Any], int, int] | None:
    """(every member before "model", parsed; where the text from the model's value to the
    closing brace, whitespace around it left out, starts and ends); None if the members before
    "model" are not of that shape.

    Only the small members are parsed, not the model's 150k entries. The text is the model's
    value exactly when "model" is last; the caller's check (its digest equals that of the
    library's own serialization of a model, one JSON value) establishes that, and otherwise
    fails."""
    decoder = json.JSONDecoder()
    end = len(serialized.rstrip(_JSON_SPACE)) - 1
    if not serialized.startswith("{") or end < 1 or serialized[end] != "}":
        return None

    def skip(pos: int) -> int:
        while serialized[pos] in _JSON_SPACE:
            pos += 1
        return pos

    head: dict[str, Any] = {}
    pos = 1
    try:
        while True:
            key, pos = decoder.raw_decode(serialized, skip(pos))
            pos = skip(pos)
            if not isinstance(key, str) or key in head or serialized[pos] != ":":
                return None
            pos = skip(pos + 1)
            if key == "model":  # the rest up to the closing brace is the model's text
                stop = len(serialized[:end].rstrip(_JSON_SPACE))
                return (head, pos, stop) if pos < stop else None
            head[key], pos = decoder.raw_decode(serialized, pos)
            pos = skip(pos)
            if serialized[pos] != ",":
                return None
            pos += 1
    except (ValueError, IndexError):
        return None


def pretty_model_sha256(raw: bytes, text: str | None = None) -> str | None:
    """For a tokenizer.json spelled pretty, as `Tokenizer.save` writes it: the sha256 of its
    model's text (`model_span`), hashed in place in its bytes (~30 ms for the Qwen tokenizer,
    where serializing the parsed model again takes 0.2 s). None if it is spelled otherwise or
    its members are not of that shape. `text`: the bytes decoded, if the caller has them."""
    if not raw.startswith(b"{\n"):
        return None
    if text is None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    span = model_span(text)
    if span is None:
        return None
    _, start, stop = span
    head_bytes = len(text[:start].encode("utf-8"))
    tail_bytes = len(text[stop:].encode("utf-8"))  # whitespace and the closing brace
    return hashlib.sha256(memoryview(raw)[head_bytes : len(raw) - tail_bytes]).hexdigest()


class _ModelRecorder:
    """A merge-order 'check' that records which model it was asked about, for the parent to
    match against the model its workers verified."""

    digest: str | None = None

    def __call__(self, model, merged, ranks) -> None:
        self.digest = model_digest(model)


_loaded: dict[str, Any] = {}  # in the confirming process: tokenizer directory -> AutoTokenizer


def _load(tokenizer_dir: str) -> None:
    """In the confirming process, first thing: AutoTokenizer, as MindSpeed loads it."""
    without_torch()
    if tokenizer_dir not in _loaded:
        _loaded[tokenizer_dir] = load_auto_tokenizer(tokenizer_dir)


def _encode_exactly(tokenizer_dir: str, columns: dict[str, list[str | None]]) -> dict[str, list[list[int]]]:
    """In the confirming process: each column's ids from the tokenizer transformers built,
    called as MindSpeed calls it (empty rows left out, as every engine leaves them). These are
    the reference ids themselves, so the parent writes them without waiting for the proof."""
    _load(tokenizer_dir)
    engine = HfEngine(tokenizer_dir, _loaded[tokenizer_dir])
    return {key: engine.encode([t for t in texts if t]) for key, texts in columns.items()}


@dataclass(frozen=True)
class Built:
    """What the confirming process reports of the tokenizer transformers built."""

    head: dict[str, Any] | None  # its serialization without the model; None: not a plain fast tokenizer
    model_sha256: str | None  # sha256 of the model's exact serialized text
    probe_ids: list[list[int]]  # HF's ids of the probe texts
    eos_token_id: int | None
    vocab_size: int
    tokenizer_sha256: str
    tokenizer_json_sha256: str | None


def _describe(tokenizer_dir: str, probes: list[str], pretty: bool) -> Built:
    """In the confirming process: the pipeline transformers built, as the tokenizers library
    serializes it (pretty or compact, as tokenizer.json is spelled), with the model reduced to
    a digest (see speculation)."""
    _load(tokenizer_dir)
    tok = _loaded[tokenizer_dir]
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    parts = None
    if backend is not None and not getattr(tok, "split_special_tokens", False):
        parts = split_model(backend.to_str(pretty=pretty))
    return Built(
        head=parts[0] if parts else None,
        model_sha256=text_sha256(parts[1]) if parts else None,
        probe_ids=[list(tok(text)["input_ids"]) for text in probes],
        eos_token_id=tok.eos_token_id,
        vocab_size=len(tok),
        tokenizer_sha256=tokenizer_identity(tokenizer_dir),
        tokenizer_json_sha256=_file_sha256(Path(tokenizer_dir) / "tokenizer.json"),
    )


def _derive(tokenizer_dir: str, force: str | None) -> tuple[EngineSpec, str | None]:
    """In the confirming process, when the digests differ: the engine transformers' pipeline
    gives, derived in full; merge order and Unicode classes left to the parent (it accepts the
    result only once those are proven)."""
    without_torch()
    recorder = _ModelRecorder()
    spec = choose_engine(tokenizer_dir, force=force, checks=EngineChecks(merge_order=recorder, unicode_classes=lambda: None))
    return spec, recorder.digest


def remember_decision(spec: EngineSpec, force: str | None) -> None:
    """In the confirming process, once the proof is settled: cache the proven decision."""
    engine_cache.store(engine_cache.cache_key(spec.tokenizer_sha256, force), spec)


class Confirmer:
    """The confirming process, started before anything else so that importing transformers
    (the longest step of the proof) begins at once."""

    def __init__(self, tokenizer_dir: str) -> None:
        self.process = WatchedPool(1, "the process checking the tokenizer with transformers")
        self.process.apply_async(_load, (tokenizer_dir,))  # its errors resurface in every later task

    def close(self) -> None:
        """Stop the process; again is harmless (multiprocessing's Pool allows it)."""
        self.process.terminate()
        self.process.join()


def confirmer_for(tokenizer_dir: str, engine: str, workers: object) -> Confirmer | None:
    """The confirming process a first run will need, started now; None if the run will not
    tokenize speculatively (one worker, --engine hf, the decision already cached, or
    Q7X2_PREPROCESS_SPECULATE=0) or its flags are not valid (the run refuses them itself)."""
    if os.environ.get("Q7X2_PREPROCESS_SPECULATE", "1") == "0":
        return None
    if engine not in ("auto", "fast") or isinstance(workers, bool) or not isinstance(workers, int) or not 1 < workers <= MAX_WORKERS:
        return None
    try:
        check_tokenizer_dir(Path(tokenizer_dir))  # no file is read before this (a FIFO would block)
        if engine_cache.has_decision(tokenizer_dir, engine_choice(engine)):
            return None
    except (UserError, OSError):
        return None
    return Confirmer(tokenizer_dir)
