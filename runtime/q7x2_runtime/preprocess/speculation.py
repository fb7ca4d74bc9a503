"""Tokenize while the engine is being proven, and write only ids the proof has covered.

Choosing the engine means loading the tokenizer the way MindSpeed does (transformers'
AutoTokenizer: seconds of imports) and proving the fast engine exact (~150k merges checked),
while tokenizer.json alone already tells what the fast engine will be. So on a first run
with a tokenizer:

- the parent reads tokenizer.json into a candidate engine and the workers start tokenizing
  with it at once;
- the workers also check the candidate's merge order (and, once per installation, the
  Unicode classes), between batches;
- a separate process loads AutoTokenizer (without importing torch, which the tokenizer never
  uses: seconds saved) and derives the engine from the pipeline transformers actually built,
  reporting a digest of that model instead of checking its merges again;
- ids are held in memory, never written, until all of that agrees: the candidate equals the
  engine derived from what transformers built, that model is the one whose merges the workers
  verified, the probes and Unicode classes agree. Only then are they written, and the decision
  cached. Otherwise nothing was written, and the run starts again with the confirmed engine.

Ids therefore never depend on the guess, only the time does.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from q7x2_runtime.preprocess import engine_cache, unicode_classes, worker
from q7x2_runtime.preprocess.cache import cache_root
from q7x2_runtime.preprocess.engines import FAST, EngineChecks, EngineSpec, _file_sha256, choose_engine, tokenizer_identity
from q7x2_runtime.preprocess.fast_bpe import MergeTable, NotExact, fast_bpe_spec
from q7x2_runtime.preprocess.parallel import WorkerPool

# Ids held back while the proof runs; beyond this the writer waits for the proof.
HOLD_BYTES = 512 << 20


def model_digest(model: dict[str, Any]) -> str:
    """sha256 of a BPE model's settings, vocabulary and merges, however the file spells them."""
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
    settings = {k: v for k, v in model.items() if k not in ("vocab", "merges")}
    vocab = sorted((model.get("vocab") or {}).items(), key=lambda kv: kv[1])
    text = json.dumps([settings, vocab, merges], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Candidate:
    spec: EngineSpec
    merged: MergeTable  # for the workers' merge-order check
    model_digest: str


def candidate_spec(tokenizer_dir: str) -> Candidate | None:
    """The fast engine tokenizer.json describes, merge order unverified; None if it describes none."""
    root = Path(tokenizer_dir)
    table: list[MergeTable] = []

    def keep_table(model, merged, ranks) -> None:  # merge order is the workers' to check
        table.append(merged)

    try:
        data = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
        fast = fast_bpe_spec(data, merge_order=keep_table)
        config_path = root / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NotExact):
        return None
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    ids = {**data["model"].get("vocab", {}), **{t["content"]: t["id"] for t in data.get("added_tokens") or []}}
    spec = EngineSpec(
        name=FAST,
        tokenizer_dir=str(tokenizer_dir),
        fast=fast,
        fallback_reason=None,
        eos_token_id=ids.get(eos) if isinstance(eos, str) else None,
        vocab_size=len(ids),
        tokenizer_sha256=tokenizer_identity(tokenizer_dir),
        tokenizer_json_sha256=_file_sha256(root / "tokenizer.json"),
    )
    return Candidate(spec=spec, merged=table[0], model_digest=model_digest(data["model"]))


def _without_torch() -> None:
    """Make transformers see no torch (or torch_npu): tokenizers never use it, and importing it
    costs seconds of CPU (more with torch_npu). A None entry makes `import` fail and
    importlib.util.find_spec report the package missing, which is how transformers asks."""
    for name in ("torch", "torch_npu", "torchvision", "torchaudio", "tensorflow", "jax", "flax"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None on purpose: see above


class _ModelRecorder:
    """A merge-order 'check' that records which model it was asked about, for the parent to
    match against the model its workers verified."""

    digest: str | None = None

    def __call__(self, model, merged, ranks) -> None:
        self.digest = model_digest(model)


def _derive(tokenizer_dir: str, force: str | None) -> tuple[EngineSpec, str | None]:
    """In the confirming process: the engine transformers' pipeline gives, merge order and
    Unicode classes left to the parent (it accepts the result only once those are proven)."""
    _without_torch()
    recorder = _ModelRecorder()
    spec = choose_engine(tokenizer_dir, force=force, checks=EngineChecks(merge_order=recorder, unicode_classes=lambda: None))
    return spec, recorder.digest


class Rejected(Exception):
    """The candidate engine is not exactly the tokenizer's; nothing was written."""


class Confirmation:
    """The proof of a candidate engine, run beside the tokenization it gates."""

    def __init__(self, tokenizer_dir: str, force: str | None, candidate: Candidate, pool: WorkerPool,
                 need_eos: bool) -> None:  # fmt: skip
        self._tokenizer_dir = tokenizer_dir
        self._force = force
        self._candidate = candidate
        self._need_eos = need_eos
        self._process = mp.get_context("spawn").Pool(1)
        self._derived = self._process.apply_async(_derive, (tokenizer_dir, force))
        assert candidate.spec.fast is not None, "a candidate is always a fast-engine spec"
        self._merges = pool.check_merges(candidate.merged, candidate.spec.fast.ranks)
        # Once per installation, not per tokenizer: usually known already.
        self._cache_root = cache_root()
        known, self._unicode_reason = unicode_classes.cached_verdict(self._cache_root)
        self._unicode = None if known else [pool.submit(worker.class_disagreement, c) for c in unicode_classes.CLASSES]
        self.verdict: EngineSpec | None = None  # set once proven
        self._settled = False

    def _ready(self) -> bool:
        pending = [self._derived, *self._merges, *(self._unicode or [])]
        return all(r.ready() for r in pending)

    def settle(self) -> EngineSpec | None:
        """Wait for the proof; the proven spec, or None if the candidate is not exact
        (UserErrors of the decision propagate)."""
        if self._settled:
            return self.verdict
        decided, digest = self._derived.get()
        c = self._candidate
        same = decided.name == FAST and decided.fast == c.spec.fast and digest == c.model_digest
        if self._need_eos and decided.eos_token_id != c.spec.eos_token_id:
            same = False
        # Always collected: the Unicode verdict is cached for later runs either way.
        merge_reasons = [r.get() for r in self._merges]
        if self._unicode is not None:
            self._unicode_reason = next((r for r in (p.get() for p in self._unicode) if r), None)
            unicode_classes.store_verdict(self._cache_root, self._unicode_reason)
            self._unicode = None
        unicode_reason = self._unicode_reason
        if same and not any(merge_reasons) and unicode_reason is None:
            self.verdict = decided
            engine_cache.store(engine_cache.cache_key(decided.tokenizer_sha256, self._force), decided)
        self._settled = True
        return self.verdict

    def gate(self, stream: Iterable[tuple[Any, dict]]) -> Iterator[tuple[Any, dict]]:
        """`stream` passed through once proven; held in memory until then. Raises Rejected."""
        held: list[tuple[Any, dict]] = []
        held_bytes = 0
        for item in stream:
            if not self._settled:
                held.append(item)
                held_bytes += sum(col.ids.nbytes for col in item[1].values())
                if not self._ready() and held_bytes < HOLD_BYTES:
                    continue
                if self.settle() is None:
                    raise Rejected
                yield from held
                held.clear()
                continue
            yield item
        if self.settle() is None:
            raise Rejected
        yield from held

    def close(self) -> None:
        self._process.terminate()
        self._process.join()

    def __enter__(self) -> Confirmation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
