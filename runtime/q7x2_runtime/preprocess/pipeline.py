"""The preprocess run: sources -> ordered parallel tokenization -> indexed datasets + manifest."""

from __future__ import annotations

import hashlib
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from q7x2_runtime.errors import UserError
from q7x2_runtime.preprocess.engine_cache import cached_engine, choose_engine_cached
from q7x2_runtime.preprocess.engines import HF, EngineSpec, check_tokenizer_dir, engine_choice
from q7x2_runtime.preprocess.limits import MAX_WORKERS
from q7x2_runtime.preprocess.prechecks import pool_checks
from q7x2_runtime.preprocess.parallel import WorkerPool
from q7x2_runtime.preprocess.confirming import Confirmer, confirmer_for
from q7x2_runtime.preprocess.speculation import Confirmation, Rejected, candidate_spec

# Imported where used: a first run starts its proof before it imports pyarrow, numpy and rich
# (the merge-order check, on the longest path to the proof's end, waits for the candidate).
if TYPE_CHECKING:
    from q7x2_runtime.preprocess.sources import Batch, SourceFile

NO_EOD_WARNING = (
    "warning: --append-eod not given: documents are written without an end-of-document token, so "
    "pretraining on packed sequences runs them together with no boundary (MindSpeed's default; pass "
    "--append-eod, usually with --reset-position-ids at training time, to separate them)"
)


@dataclass(frozen=True)
class PreprocessOptions:
    input: str
    tokenizer: str
    output_prefix: str
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    workers: int = 1
    append_eod: bool = False
    log_interval: int = 1000
    batch_rows: int = 1024
    engine: str = "auto"  # auto | fast | hf


@dataclass(frozen=True)
class PreprocessResult:
    manifest: dict[str, Any]
    seconds: float
    outputs: dict[str, str]  # json key -> data path prefix


# Plausible ranges: beyond them a value is a typo, and some (workers) would cost real resources.
_LIMITS = {"--workers": ("workers", 1, MAX_WORKERS), "--batch-rows": ("batch_rows", 1, 10_000_000), "--log-interval": ("log_interval", 1, 10**15)}
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


def check_options(opts: PreprocessOptions) -> None:
    """Refuse bad flags before any input or output is touched, naming the flag."""
    for flag, (attr, low, high) in _LIMITS.items():
        value = getattr(opts, attr)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UserError(f"{flag} {value!r}: must be an integer from {low} to {high:,}")
    if not opts.json_keys:
        raise UserError("--json-keys: give at least one column name")
    for key in opts.json_keys:
        # Keys become parts of output file names (<prefix>_<key>_document.bin).
        if not _KEY.fullmatch(key) or ".." in key:
            raise UserError(
                f"--json-keys {key!r}: a column name must be letters, digits, '_', '-' or '.', at most 128, "
                "since it becomes part of the output file names"
            )
    if not str(opts.output_prefix).strip() or str(opts.output_prefix).endswith("/"):
        raise UserError(f"--output-prefix {opts.output_prefix!r}: give a path prefix such as /data/alpaca (files are <prefix>_<key>_document.*)")
    check_tokenizer_dir(Path(opts.tokenizer))


def run(opts: PreprocessOptions, confirmer: Confirmer | None = None) -> PreprocessResult:
    """The whole run. `confirmer`: the caller's `confirmer_for(...)` if it started one even
    before importing this module (the caller stops it); else one is started here if needed."""
    check_options(opts)
    keys = list(dict.fromkeys(opts.json_keys))
    start = time.perf_counter()
    force = engine_choice(opts.engine)
    cached = cached_engine(opts.tokenizer, force)
    own = confirmer is None and cached is None
    if own:
        confirmer = confirmer_for(opts.tokenizer, opts.engine, opts.workers)
    try:
        with WorkerPool(opts.workers) as pool:
            proof = _start_proof(opts, force, pool, confirmer) if cached is None and confirmer is not None else None
            from q7x2_runtime.preprocess.sources import discover

            sources = discover(opts.input, keys)
            return _run(opts, keys, sources, pool, start, force, cached, None if cached else confirmer, proof)
    finally:
        if own and confirmer is not None:
            confirmer.close()


def _run(
    opts: PreprocessOptions,
    keys: list[str],
    sources: list[SourceFile],
    pool: WorkerPool,
    start: float,
    force: str | None,
    cached: EngineSpec | None,
    confirmer: Confirmer | None,
    proof: Confirmation | None,
) -> PreprocessResult:
    if cached is not None:
        result = _write(opts, keys, sources, pool, start, cached, True)
        assert result is not None, "only a confirm callback rejects a run"
        return result
    if confirmer is not None:
        if proof is not None:
            result = _write(opts, keys, sources, pool, start, proof.candidate, False, gate=proof)
            if result is not None:
                return result
            # Not the engine tokenizer.json suggested (nothing was written): decide for real.
            print("preprocess: the tokenizer differs from what tokenizer.json suggested; running again", file=sys.stderr)
        confirmer.close()  # the decision below loads transformers itself
    checks = None if force == HF else (lambda: pool_checks(opts.tokenizer, pool))
    spec, cached_now = choose_engine_cached(opts.tokenizer, force, checks)
    result = _write(opts, keys, sources, pool, start, spec, cached_now)
    assert result is not None, "only a confirm callback rejects a run"
    return result


def _start_proof(opts: PreprocessOptions, force: str | None, pool: WorkerPool, confirmer: Confirmer) -> Confirmation | None:
    """The engine tokenizer.json describes and its proof, started at once (the input is read
    after); None if tokenizer.json describes no fast engine (or none --append-eod can use)."""
    candidate = candidate_spec(opts.tokenizer)
    if candidate is None or (candidate.spec.eos_token_id is None and opts.append_eod):
        return None
    return Confirmation(opts.tokenizer, force, candidate, pool, opts.append_eod, confirmer)


def _write(
    opts: PreprocessOptions,
    keys: list[str],
    sources: list[SourceFile],
    pool: WorkerPool,
    start: float,
    spec: EngineSpec,
    cached: bool,
    gate: Confirmation | None = None,
) -> PreprocessResult | None:
    """Tokenize everything with `spec`; None (nothing written) if the `gate`'s proof rejects it."""
    from q7x2_runtime.preprocess.output import OutputSet, output_prefix
    from q7x2_runtime.preprocess.progress import ProgressReporter

    eod = None
    if opts.append_eod:
        if spec.eos_token_id is None:
            raise UserError(f"--append-eod: the tokenizer in {opts.tokenizer} defines no eos token")
        eod = int(spec.eos_token_id)

    hashing = _SourceHasher(sources)
    known_rows = [s.rows for s in sources if s.rows is not None]
    total_rows = sum(known_rows) if len(known_rows) == len(sources) else None
    progress = ProgressReporter(total_rows, opts.log_interval)
    counts = {k: {"documents": 0, "tokens": 0, "skipped_empty": 0} for k in keys}
    rows = 0
    try:
        with OutputSet(opts.output_prefix, keys) as out:
            batches = _all_batches(sources, keys, opts.batch_rows)
            if gate is None:
                stream = pool.ordered(batches, spec, eod)
            else:  # ids reach the writer only once the engine is proven
                stream = gate.gate(pool.paced(gate.sequenced(batches), spec, eod, gate))
            try:
                for batch, encoded in stream:
                    docs = tokens = 0
                    for key, col in encoded.items():
                        out.add(key, col.ids, col.lengths)
                        c = counts[key]
                        c["documents"] += int(col.lengths.size)
                        c["tokens"] += int(col.ids.size)
                        c["skipped_empty"] += col.skipped_empty
                        docs += int(col.lengths.size)
                        tokens += int(col.ids.size)
                    rows += len(batch)
                    progress.advance(len(batch), docs, tokens)
            except Rejected:
                return None  # nothing was written; the OutputSet removes its empty temp files
            progress.close()
            seconds = time.perf_counter() - start
            if all(c["documents"] == 0 for c in counts.values()):
                raise UserError(f"no non-empty text in column(s) {', '.join(keys)} of {opts.input}")
            if gate is not None:
                assert gate.verdict is not None, "a gate that did not reject has its verdict"
                spec = gate.verdict  # what transformers built, proven equal to the candidate
            manifest = _manifest(opts, keys, spec, cached, eod, sources, hashing.result(), counts, rows, seconds)
            out.commit(manifest)
    finally:
        progress.close()
    # Said of the dataset written, so a refused input is one line on stderr, not two.
    if not opts.append_eod:
        print(NO_EOD_WARNING, file=sys.stderr)
    return PreprocessResult(
        manifest=manifest, seconds=seconds, outputs={k: output_prefix(opts.output_prefix, k) for k in keys}
    )


def _all_batches(sources: list[SourceFile], keys: list[str], batch_rows: int) -> Iterator[Batch]:
    from q7x2_runtime.preprocess.sources import iter_batches

    for source in sources:
        yield from iter_batches(source, keys, batch_rows)


class _SourceHasher:
    """sha256 of every input file, computed on a thread while tokenization runs."""

    def __init__(self, sources: list[SourceFile]) -> None:
        self._sources = sources
        self._out: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for s in self._sources:
            h = hashlib.sha256()
            with open(s.path, "rb") as f:
                while chunk := f.read(8 << 20):
                    h.update(chunk)
            self._out.append({"path": str(s.path), "format": s.format, "bytes": s.path.stat().st_size, "sha256": h.hexdigest()})

    def result(self) -> list[dict[str, Any]]:
        self._thread.join()
        return self._out


def _manifest(
    opts: PreprocessOptions,
    keys: list[str],
    spec: EngineSpec,
    cached: bool,
    eod: int | None,
    sources: list[SourceFile],
    hashes: list[dict[str, Any]],
    counts: dict[str, dict[str, int]],
    rows: int,
    seconds: float,
) -> dict[str, Any]:
    from q7x2_runtime.preprocess.output import manifest_path, output_prefix

    return {
        "tool": "q7x2-runtime preprocess",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "handler": "GeneralPretrainHandler",
        "rows": rows,
        "append_eod": eod is not None,
        "eod_token_id": eod,
        "dtype": "int32",
        "outputs": {
            key: {
                "data_path": str(Path(output_prefix(opts.output_prefix, key))),
                **counts[key],
            }
            for key in keys
        },
        "tokenizer": {
            "path": str(opts.tokenizer),
            "tokenizer_json_sha256": spec.tokenizer_json_sha256,
            "files_sha256": spec.tokenizer_sha256,
            "engine": spec.name,
            "fallback_reason": spec.fallback_reason,
            "engine_decision": "cached" if cached else "verified",
            "fast_pattern": spec.fast.pattern_name if spec.fast else None,
            "vocab_size": spec.vocab_size,
        },
        "sources": hashes,
        "workers": opts.workers,
        "seconds": round(seconds, 3),
        "manifest": str(manifest_path(opts.output_prefix)),
    }
