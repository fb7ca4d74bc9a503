"""Tokenize while the engine is being proven, and write only ids the proof has covered.

Choosing the engine means loading the tokenizer the way MindSpeed does (transformers'
AutoTokenizer: seconds of imports) and proving the fast engine exact (~150k merges checked),
while tokenizer.json alone already tells what the fast engine will be. So on a first run
with a tokenizer:

- a separate process (confirming.py) starts loading AutoTokenizer at once, before the rest of
  preprocess is even imported, and without importing torch, which the tokenizer never uses
  (seconds saved);
- meanwhile the parent reads tokenizer.json into a candidate engine; the workers check the
  candidate's merge order (and, once per installation, the Unicode classes), then encode the
  probe texts and start tokenizing with it. The merge check starts at once on as many
  workers as leave the confirming process a core (`proof_budget`: one on 2 cores); the others
  build the engine, then take the check's last shares;
- the first rows are not the candidate's to encode: the confirming process encodes them with
  the tokenizer it loaded, as soon as it is loaded. Those are the reference ids, so they are
  written at once, while the rest of the proof runs;
- right after, that process serializes the pipeline transformers actually
  built (`backend_tokenizer.to_str()`, the tokenizers library's own description of it) and
  returns everything but the BPE model as JSON, the model as a sha256 of its exact text,
  and HF's ids of the probe texts. The parent has the same digest of the candidate's model:
  for a tokenizer.json spelled as the library saves it (pretty), of the model's text in the
  very bytes it built the candidate from (that process then serializes pretty too); for any
  other, of the model serialized the way the library does (compact). Equal digests mean the
  model transformers built is, byte for byte, the one whose merges the workers verified, with
  no second parse or derivation of 150k entries. The rest of the pipeline goes through the
  same checks as always. (If the digests differ, e.g. a tokenizer.json spelled differently
  from what the library writes, that process derives the engine from transformers' pipeline
  in full, as before.)
- the candidate's ids are held in memory, never written, until all of that agrees: the
  candidate equals the engine derived from what transformers built, that model is the one
  whose merges the workers verified, the probes and Unicode classes agree. Only then are they
  written (at once: the pool's stream ticks while it waits), and the decision cached by the
  confirming process while the workers go on. Otherwise the output so far (only transformers'
  own ids) is removed unfinished, and the run starts again with the confirmed engine.

Ids therefore never depend on the guess, only the time does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from q7x2_runtime.preprocess import unicode_classes, worker
from q7x2_runtime.preprocess.cache import cache_root
from q7x2_runtime.preprocess.confirming import (
    Built, Confirmer, _derive, _describe, _encode_exactly, model_digest, pretty_model_sha256, remember_decision,
    text_sha256,
)  # fmt: skip
from q7x2_runtime.preprocess.engines import FAST, EngineSpec, _file_sha256, flatten, probe_texts, tokenizer_identity
from q7x2_runtime.preprocess.fast_bpe import MergeTable, NotExact, fast_bpe_spec, pipeline_shape, split_by_length
from q7x2_runtime.preprocess.parallel import WorkerPool

if TYPE_CHECKING:  # sources imports pyarrow, which the proof is started before (see pipeline)
    from q7x2_runtime.preprocess.sources import Batch

# Ids held back while the proof runs; beyond this the writer waits for the proof.
HOLD_BYTES = 512 << 20
FIRST_ROWS = 64  # rows of the first batch the confirming process encodes (see sequenced)


def serialized_model(model: dict[str, Any]) -> str:
    """A BPE model as the tokenizers library serializes it: compact JSON, the vocabulary in id
    order, merges as pairs, settings in the order given. For a tokenizer.json the library
    wrote this is exactly its own text (checked on the real Qwen tokenizer); anything else only
    makes the digests differ, which costs time (the full derivation), never exactness. For a
    tokenizer.json saved by the library (pretty) the file's own text serves (see Candidate)."""
    settings = {k: v for k, v in model.items() if k not in ("vocab", "merges")}
    vocab = model.get("vocab") or {}
    ids = list(vocab.values())
    if any(map(int.__gt__, ids[:-1], ids[1:])):
        vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    merges = model.get("merges") or []
    if str in set(map(type, merges)):
        merges = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]

    def dump(obj: object) -> str:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    head = dump(settings)[:-1] + ("," if settings else "")
    return f'{head}"vocab":{dump(vocab)},"merges":{dump(merges)}}}'


@dataclass(frozen=True)
class Candidate:
    spec: EngineSpec
    merged: MergeTable  # for the workers' merge-order check
    model: dict[str, Any]  # tokenizer.json's BPE model, for the confirmation's digests
    # The sha256 of the model's text in tokenizer.json if the file is spelled pretty, as the
    # library saves it (0.03 s; serialized_model takes 0.2 s); None: use serialized_model.
    pretty_model_sha256: str | None


def candidate_spec(tokenizer_dir: str) -> Candidate | None:
    """The fast engine tokenizer.json describes, merge order unverified; None if it describes none."""
    root = Path(tokenizer_dir)
    table: list[MergeTable] = []

    def keep_table(model, merged, ranks) -> None:  # merge order is the workers' to check
        table.append(merged)

    try:
        raw = (root / "tokenizer.json").read_bytes()
        text = raw.decode("utf-8")  # once, for the parse and the digest
        data = json.loads(text)
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
    return Candidate(spec=spec, merged=table[0], model=data["model"], pretty_model_sha256=pretty_model_sha256(raw, text))


def proof_budget(workers: int) -> int:
    """Workers the pool keeps busy while the proof runs: as many as leave a core to the
    confirming process, whose end the first write waits for (CFS shares a core evenly among
    the processes that want it, so one more would slow that process by a third on 2 cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(workers, cores - 1))


class Rejected(Exception):
    """The candidate engine is not exactly the tokenizer's; nothing was written."""


class Confirmation:
    """The proof of a candidate engine, run beside the tokenization it gates."""

    def __init__(self, tokenizer_dir: str, force: str | None, candidate: Candidate, pool: WorkerPool,
                 need_eos: bool, confirmer: Confirmer) -> None:  # fmt: skip
        self._tokenizer_dir = tokenizer_dir
        self._force = force
        self._candidate = candidate
        self._need_eos = need_eos
        self._confirmer = confirmer
        self._process = confirmer.process
        self._let_go = False  # the process was stopped once its work was done (see gate)
        fast = candidate.spec.fast
        assert fast is not None, "a candidate is always a fast-engine spec"
        self.probes = [t for t in probe_texts({**fast.added_tokens, **fast.normalized_added_tokens}) if t]
        self._built: Any = None  # the AsyncResult of _describe: queued after the first rows (see sequenced)
        self._head: tuple[Batch, Any] | None = None  # the first rows, and transformers' ids of them
        self._budget = proof_budget(pool.workers)
        # The merge check, in parts by token length: `budget` workers start a part of weight
        # two each at once; the others first build the engine (as `_write` will ask for it)
        # and encode the probes, then take a part of weight one, so all end about together
        # (on 2 cores: two thirds at once, a third after the engine). The check is on the
        # longest path to the candidate's first ids: it waits for the candidate, and shares
        # the cores.
        idle = pool.workers - self._budget
        eod = int(candidate.spec.eos_token_id) if need_eos and candidate.spec.eos_token_id is not None else None
        check = pool.merge_checker(candidate.merged, fast.ranks, engine=(candidate.spec, eod))
        parts = split_by_length(candidate.merged, [2] * self._budget + [1] * idle)
        self._merges = [check(lengths) for lengths in parts[: self._budget]]
        pool.warm(candidate.spec, eod, tasks=idle)
        self._eod = eod
        self._probe_ids = pool.encode(candidate.spec, eod, {"probes": list(self.probes)})
        self._merges += [check(lengths) for lengths in parts[self._budget :]]  # queued after those
        # Once per installation, not per tokenizer: usually known already.
        self._cache_root = cache_root()
        known, self._unicode_reason = unicode_classes.cached_verdict(self._cache_root)
        self._unicode = None if known else [pool.submit(worker.class_disagreement, c) for c in unicode_classes.CLASSES]
        self._model_sha256: str | None = None
        self._fast_probe_ids: list[list[int]] | None = None  # the workers' ids of the probes
        self.verdict: EngineSpec | None = None  # set once proven
        self._settled = False
        self._remembering: Any = None  # the AsyncResult of caching the verdict

    def _model_digest(self) -> str:
        if self._model_sha256 is None:  # when the parent waits for results anyway
            pretty = self._candidate.pretty_model_sha256
            self._model_sha256 = pretty or text_sha256(serialized_model(self._candidate.model))
        return self._model_sha256

    def _describing(self) -> Any:
        if self._built is None:
            pretty = self._candidate.pretty_model_sha256 is not None  # spelled as the parent's digest is
            self._built = self._process.apply_async(_describe, (self._tokenizer_dir, self.probes, pretty))
        return self._built

    def _ready(self) -> bool:
        self._describing()
        self._model_digest()
        pending = [self._built, self._probe_ids, *self._merges, *(self._unicode or [])]
        return all(r.ready() for r in pending)

    def _proven_by_digest(self, built: Built) -> EngineSpec | None:
        """The engine transformers built, if its model's digest is the candidate's (the model
        the workers verified) and the rest of its pipeline gives the candidate's shape; None
        if that does not settle it."""
        c = self._candidate
        if built.head is None or built.model_sha256 != self._model_digest():
            return None
        try:
            fast = pipeline_shape(built.head).spec(c.spec.fast.ranks if c.spec.fast else {})
        except NotExact:
            return None
        if fast != c.spec.fast or built.probe_ids != self._fast_probe_ids:
            return None
        return EngineSpec(
            name=FAST,
            tokenizer_dir=str(self._tokenizer_dir),
            fast=fast,
            fallback_reason=None,
            eos_token_id=built.eos_token_id,
            vocab_size=built.vocab_size,
            tokenizer_sha256=built.tokenizer_sha256,
            tokenizer_json_sha256=built.tokenizer_json_sha256,
        )

    def settle(self) -> EngineSpec | None:
        """Wait for the proof; the proven spec, or None if the candidate is not exact
        (UserErrors of the decision propagate)."""
        if self._settled:
            return self.verdict
        c = self._candidate
        self._take_probes(self._probe_ids.get()[1], self._eod)
        decided = self._proven_by_digest(self._describing().get())
        same = decided is not None
        if decided is None:  # derive it in full from what transformers built
            decided, digest = self._process.apply_async(_derive, (self._tokenizer_dir, self._force)).get()
            same = decided.name == FAST and decided.fast == c.spec.fast and digest == model_digest(c.model)
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
        self._settled = True
        return self.verdict

    @property
    def candidate(self) -> EngineSpec:
        """The engine being proven (ids are made with it meanwhile)."""
        return self._candidate.spec

    def in_flight(self) -> int | None:
        """How many batches the pool may work on at once: while the proof runs, its budget of
        cores (see `proof_budget`); then the pool's own bound (None)."""
        return None if self._settled else self._budget

    def ticking(self) -> bool:
        """Ticks while the proof runs: held ids are written as soon as it is complete."""
        return not self._settled

    def _remember(self):
        """Cache the proven decision for later runs, in the confirming process: its work is done,
        and in this one storing ~150k ranks as JSON would hold the GIL for a tenth of a second
        while the workers wait for their next batches. An AsyncResult to wait for."""
        return self._process.apply_async(remember_decision, (self.verdict, self._force))

    def sequenced(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """`batches` but the first batch's first FIRST_ROWS rows, which go to the confirming
        process instead: encoded there by transformers' tokenizer itself as soon as it is
        loaded, they are the reference ids and are written at once (see `gate`), long before
        the proof is complete. What it built is described right after."""
        it = iter(batches)
        first = next(it, None)
        if first is not None:
            head, rest = first, None
            if len(first) > FIRST_ROWS:
                head = dataclasses.replace(first, columns={k: v[:FIRST_ROWS] for k, v in first.columns.items()})
                rest = dataclasses.replace(first, first_row=first.first_row + FIRST_ROWS,
                                           columns={k: v[FIRST_ROWS:] for k, v in first.columns.items()})
            self._head = (head, self._process.apply_async(_encode_exactly, (self._tokenizer_dir, head.columns)))
            self._describing()
            if rest is not None:
                yield rest
        self._describing()
        yield from it

    def _exact_head(self) -> tuple[Batch, dict]:
        """The first rows with transformers' own ids (waited for if need be)."""
        assert self._head is not None
        batch, result = self._head
        docs = result.get()
        self._head = None
        encoded = {}
        for key, texts in batch.columns.items():
            ids, lengths = flatten(docs[key], self._eod)
            encoded[key] = worker.EncodedColumn(ids=ids, lengths=lengths, skipped_empty=len(texts) - len(docs[key]))
        return batch, encoded

    def _take_probes(self, encoded: dict, eod: int | None) -> None:
        col = next(iter(encoded.values()))
        ids = col.ids.tolist()
        out, pos = [], 0
        for n in col.lengths.tolist():
            doc = ids[pos : pos + n]
            out.append(doc[:-1] if eod is not None else doc)
            pos += n
        self._fast_probe_ids = out

    def gate(self, stream: Iterable[tuple[Any, dict] | None]) -> Iterator[tuple[Any, dict]]:
        """`stream` (`WorkerPool.paced` over `sequenced`, with this as its pacing) passed
        through once proven, held in memory until then; the first rows, encoded by
        transformers itself, before it as soon as they come back. Raises Rejected."""
        held: list[tuple[Any, dict]] = []
        held_bytes = 0
        for item in stream:
            if not self._let_go:
                self._process.check()  # its tasks are waited for by ready(), which a lost one never is
            if self._head is not None and self._head[1].ready():
                yield self._exact_head()
            if item is None:  # a tick while the pool works: the proof may be complete now
                # (checked with nothing held too: the parent's digest is then computed while
                # it waits anyway, and a settled proof lets the pool take more batches)
                if self._head is None and not self._settled and self._ready():
                    yield from self._release(held)
                continue
            if self._settled:
                if not self._let_go and self._remembering is not None and self._remembering.ready():
                    # Its last task is done: stopped now, its memory (transformers and the
                    # tokenizer, a few hundred MB) and its shutdown are off the end of the run.
                    self._confirmer.close()
                    self._let_go = True
                yield item
                continue
            held.append(item)
            held_bytes += sum(col.ids.nbytes for col in item[1].values())
            if (self._head is None and self._ready()) or held_bytes >= HOLD_BYTES:
                yield from self._release(held)
        yield from self._release(held)
        # Only a finished run waits (a store takes a fraction of a second; the process may be
        # gone after an interruption).
        (self._remembering or self._remember()).wait(60)

    def _release(self, held: list[tuple[Any, dict]]) -> Iterator[tuple[Any, dict]]:
        """The first rows if still due, then the held items once the proof (waited for if need
        be) is complete; Rejected if it fails. The first time, the decision is cached meanwhile."""
        if self._head is not None:
            yield self._exact_head()
        if self.settle() is None:
            raise Rejected
        if self._remembering is None:
            self._remembering = self._remember()  # while the workers go on
        yield from held
        held.clear()

    def __enter__(self) -> Confirmation:
        return self

    def __exit__(self, *exc) -> None:
        pass  # the Confirmer's owner stops the process
