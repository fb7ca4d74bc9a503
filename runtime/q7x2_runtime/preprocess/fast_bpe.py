"""Decide whether a HF tokenizer can be run exactly by tiktoken's BPE engine.

HF `tokenizers` merges by merge-list priority; tiktoken merges the adjacent pair whose
concatenation has the lowest rank (= token id). The two produce the same ids when

  1. tiktoken is given only the 256 byte tokens and the merge results (HF's merging cannot
     reach any other vocabulary entry either, e.g. special tokens kept in the vocabulary),
     each merge produces a distinct token, and the results' ids increase in merge order
     (so "lowest rank" and "earliest merge" agree), and
  2. for every merge (a, b) -> t, tiktoken's merging of t's bytes using only ranks below t
     ends in exactly [a, b].

(2) rules out "spurious" pairs: inside any text, the tokens covering t's bytes evolve like
the standalone run on t's bytes (merges never split), whose only two-token state is [a, b];
so tiktoken never joins a pair HF has no merge for, and on genuine pairs the two orderings
coincide by (1). Both pick the leftmost pair on ties.

Everything else in the pipeline must be a shape we reproduce exactly (NFC or no normalizer,
a known split regex + byte-level mapping, added tokens matched verbatim, no post-processor
that inserts tokens). Anything else returns a reason and the caller falls back to HF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import accumulate
from collections.abc import Iterator, Sequence
from typing import Any, Callable, cast, overload

from q7x2_runtime.preprocess.bytelevel import byte_to_char

# Split regexes whose every alternative is understood by both Oniguruma (HF) and
# fancy-regex (tiktoken) identically, and which leave no unmatched gaps (tiktoken drops
# gaps, HF's "Isolated" split keeps them).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CL100K_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
KNOWN_PATTERNS = {QWEN2_PATTERN: "qwen2", CL100K_PATTERN: "cl100k", GPT2_PATTERN: "gpt2"}


class NotExact(Exception):
    """The tokenizer has a feature the fast engine does not reproduce exactly."""


@dataclass(frozen=True)
class FastBpeSpec:
    """Everything a worker needs to build the fast engine (picklable)."""

    pattern: str
    pattern_name: str
    nfc: bool
    ranks: dict[bytes, int] = field(repr=False)
    added_tokens: dict[str, int] = field(repr=False)  # split out of the raw text first
    normalized_added_tokens: dict[str, int] = field(repr=False)  # then out of normalized pieces


Merge = tuple[bytes, bytes, bytes, int]  # (piece, left, right, rank)


class MergeTable(Sequence[Merge]):
    """The merges in merge order, (piece, left, right, rank) each, kept as columns: a merge's
    tuple is only made when asked for (150k tuples cost the parent 0.1 s it need not spend:
    the workers check the merges, and it only needs their lengths)."""

    def __init__(self, pieces: list[bytes], left_lengths: list[int], ranks: list[int]) -> None:
        self.pieces, self.left_lengths, self.ranks = pieces, left_lengths, ranks

    def __len__(self) -> int:
        return len(self.pieces)

    @overload
    def __getitem__(self, i: int) -> Merge: ...

    @overload
    def __getitem__(self, i: slice) -> list[Merge]: ...

    def __getitem__(self, i: int | slice) -> Merge | list[Merge]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return _merge(self.pieces[i], self.left_lengths[i], self.ranks[i])

    def __iter__(self) -> Iterator[Merge]:
        return map(_merge, self.pieces, self.left_lengths, self.ranks)


def _merge(piece: bytes, left_length: int, rank: int) -> Merge:
    return piece, piece[:left_length], piece[left_length:], rank


def piece_lengths(merged: Sequence[Merge]) -> list[int]:
    return list(map(len, merged.pieces)) if isinstance(merged, MergeTable) else [len(m[0]) for m in merged]


def left_lengths(merged: Sequence[Merge]) -> list[int]:
    return merged.left_lengths if isinstance(merged, MergeTable) else [len(m[1]) for m in merged]

# Verifies condition (2) for a model; raises NotExact. Lets the caller run it elsewhere.
MergeOrderCheck = Callable[[dict[str, Any], Sequence[Merge], dict[bytes, int]], None]


def fast_bpe_spec(tokenizer_json: dict[str, Any], merge_order: MergeOrderCheck | None = None) -> FastBpeSpec:
    """The fast-engine spec for an (effective) tokenizer.json, or NotExact(reason)."""
    shape = pipeline_shape(tokenizer_json)
    model = tokenizer_json.get("model") or {}
    merged, ranks = merge_table(model)
    (merge_order or _local_merge_order)(model, merged, ranks)
    return shape.spec(ranks)


@dataclass(frozen=True)
class PipelineShape:
    """What the fast engine takes from everything but the BPE model."""

    pattern: str
    nfc: bool
    added_tokens: dict[str, int]
    normalized_added_tokens: dict[str, int]

    def spec(self, ranks: dict[bytes, int]) -> FastBpeSpec:
        return FastBpeSpec(
            pattern=self.pattern,
            pattern_name=KNOWN_PATTERNS[self.pattern],
            nfc=self.nfc,
            ranks=ranks,
            added_tokens=self.added_tokens,
            normalized_added_tokens=self.normalized_added_tokens,
        )


def pipeline_shape(tokenizer_json: dict[str, Any]) -> PipelineShape:
    """The checks of `fast_bpe_spec` on the normalizer, pre-tokenizer, post-processor and
    added tokens (the model's are `merge_table`'s); NotExact(reason) if one fails."""
    nfc = _check_normalizer(tokenizer_json.get("normalizer"))
    pattern = _check_pre_tokenizer(tokenizer_json.get("pre_tokenizer"))
    _check_post_processor(tokenizer_json.get("post_processor"))
    raw, normalized = _check_added_tokens(tokenizer_json.get("added_tokens") or [], nfc)
    return PipelineShape(pattern=pattern, nfc=nfc, added_tokens=raw, normalized_added_tokens=normalized)


def _check_normalizer(norm: dict[str, Any] | None) -> bool:
    if norm is None:
        return False
    if norm.get("type") == "Sequence":
        inner = norm.get("normalizers") or []
        if not inner:
            return False
        if len(inner) == 1:
            return _check_normalizer(inner[0])
        raise NotExact("normalizer sequence with several steps")
    if norm.get("type") == "NFC":
        return True
    raise NotExact(f"normalizer {norm.get('type')} (only NFC or none run on the fast path)")


def _check_pre_tokenizer(pre: dict[str, Any] | None) -> str:
    if pre is None:
        raise NotExact("no pre-tokenizer")
    steps: list[dict[str, Any]] = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel":
        bl = steps[0]
        if bl.get("add_prefix_space") or not bl.get("use_regex", True):
            raise NotExact("ByteLevel pre-tokenizer with add_prefix_space or without its regex")
        return GPT2_PATTERN
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
        raise NotExact("pre-tokenizer is not Split(regex) followed by ByteLevel")
    split, bl = steps
    regex = (split.get("pattern") or {}).get("Regex")
    if regex not in KNOWN_PATTERNS:
        raise NotExact("split regex is not a known byte-level BPE pattern")
    if split.get("behavior") != "Isolated" or split.get("invert"):
        raise NotExact("split behaviour is not Isolated")
    if bl.get("add_prefix_space") or bl.get("use_regex"):
        raise NotExact("ByteLevel step adds a prefix space or splits again")
    return regex


def _check_post_processor(post: dict[str, Any] | None) -> None:
    if post is None:
        return
    steps: list[dict[str, Any]] = (post.get("processors") or []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        # ByteLevel only adjusts offsets; a template of bare sequences adds nothing either
        # (transformers 5 saves one: single "$A", pair "$A $B"). Anything else may add tokens.
        if step.get("type") == "ByteLevel" or _template_adds_nothing(step):
            continue
        raise NotExact(f"post-processor {step.get('type')} may add tokens")


def _template_adds_nothing(step: dict[str, Any]) -> bool:
    if step.get("type") != "TemplateProcessing":
        return False
    single, pair = step.get("single"), step.get("pair")
    if not isinstance(single, list) or not isinstance(pair, list):
        return False
    if any(not isinstance(piece, dict) or set(piece) != {"Sequence"} for piece in single + pair):
        return False  # a SpecialToken piece (or anything unknown) inserts ids
    return [piece["Sequence"].get("id") for piece in single] == ["A"]


def _check_added_tokens(added: list[dict[str, Any]], nfc: bool) -> tuple[dict[str, int], dict[str, int]]:
    """(raw, normalized) added tokens. HF first splits tokens with normalized=false out of the
    raw text, then normalizes the remaining pieces and splits out the normalized=true ones
    (whose own text it normalizes the same way)."""
    raw: dict[str, int] = {}
    normalized: dict[str, int] = {}
    nfc_str = None
    if nfc:
        from tokenizers import normalizers

        nfc_str = normalizers.NFC().normalize_str
    for tok in added:
        content = tok.get("content")
        if tok.get("single_word") or tok.get("lstrip") or tok.get("rstrip"):
            raise NotExact(f"added token {content!r} uses single_word/lstrip/rstrip matching")
        if not content:
            raise NotExact("empty added token")
        if tok.get("normalized"):
            normalized[nfc_str(content) if nfc_str else content] = int(tok["id"])
        else:
            raw[content] = int(tok["id"])
    return raw, normalized


def _local_merge_order(model: dict[str, Any], merged: Sequence[Merge], ranks: dict[bytes, int]) -> None:
    check_merge_order(merged, ranks)


def merge_table(model: dict[str, Any]) -> tuple[MergeTable, dict[bytes, int]]:
    """Condition (1) and the tiktoken ranks; condition (2) is `check_merge_order`'s."""
    if model.get("type") != "BPE":
        raise NotExact(f"model type {model.get('type')} is not BPE")
    if model.get("dropout"):
        raise NotExact("BPE dropout is random")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise NotExact("BPE with subword prefix/suffix markers")
    vocab: dict[str, int] = model.get("vocab") or {}
    merges = model.get("merges") or []
    if len(set(vocab.values())) != len(vocab):
        raise NotExact("vocabulary ids are not unique")

    ranks: dict[bytes, int] = {}
    for b, ch in byte_to_char().items():
        if ch not in vocab:
            raise NotExact(f"byte {b:#04x} has no vocabulary entry")
        ranks[bytes([b])] = vocab[ch]

    merged = _merges_at_once(merges, vocab, ranks)
    if merged is None:  # some merge breaks a rule: find which, one by one
        merged = _merges_one_by_one(merges, vocab, _vocab_bytes(vocab), ranks)

    extras = len(vocab) - len(ranks)
    if extras and model.get("ignore_merges"):
        # HF would return such entries for a whole matching word; tiktoken never does.
        raise NotExact("ignore_merges with vocabulary entries no merge produces")
    return merged, ranks


def _merges_at_once(merges: list, vocab: dict[str, int], ranks: dict[bytes, int]) -> MergeTable | None:
    """The merge table with every rule of `_merges_one_by_one` checked over whole columns
    (C loops, ~0.15 s for 150k merges); None if any rule fails. Fills `ranks`.

    A byte-level spelled string has one character per byte, so a merge's piece is its
    result's spelling and its left part is as many bytes long as the left string is long."""
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
    try:
        if set(map(len, pairs)) - {2}:
            return None
        lefts, rights = [p[0] for p in pairs], [p[1] for p in pairs]
        results = list(map(str.__add__, lefts, rights))
    except TypeError:  # not pairs of strings: the one-by-one path says what
        return None
    maybe_rids = list(map(vocab.get, results))
    if None in maybe_rids or None in map(vocab.get, lefts) or None in map(vocab.get, rights):
        return None  # refers to tokens outside the vocabulary
    joined = "".join(results)
    if _stray().search(joined):  # a part is not byte-level spelled
        return None
    rids = cast(list[int], maybe_rids)
    if any(map(int.__le__, rids[1:], rids[:-1])):
        return None
    data = joined.translate(_to_latin1()).encode("latin-1")
    ends = list(accumulate(map(len, results)))
    pieces = list(map(data.__getitem__, map(slice, [0, *ends[:-1]], ends)))
    before = len(ranks)
    ranks.update(zip(pieces, rids))
    if len(ranks) != before + len(pieces):  # two merges produce one token
        for piece in pieces:
            ranks.pop(piece, None)
        return None
    return MergeTable(pieces, list(map(len, lefts)), rids)


def _merges_one_by_one(
    merges: list, vocab: dict[str, int], spelled: dict[str, bytes], ranks: dict[bytes, int]
) -> MergeTable:
    pieces: list[bytes] = []
    left_lengths: list[int] = []
    rids: list[int] = []
    last_id = -1
    for m in merges:
        pair = m.split(" ", 1) if isinstance(m, str) else m
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise NotExact(f"merge {m!r} is not a pair of tokens")
        left, right = pair
        result = left + right
        rid = vocab.get(result)
        if rid is None or left not in vocab or right not in vocab:
            raise NotExact(f"merge {left!r} {right!r} refers to tokens outside the vocabulary")
        if left not in spelled or right not in spelled:
            raise NotExact(f"merge {left!r} {right!r} is not byte-level spelled")
        if rid <= last_id:
            raise NotExact("merge results' ids do not increase in merge order")
        last_id = rid
        lb, rb = spelled[left], spelled[right]
        piece = lb + rb
        if piece in ranks:
            raise NotExact(f"two merges produce {result!r}")
        ranks[piece] = rid
        pieces.append(piece)
        left_lengths.append(len(lb))
        rids.append(rid)
    return MergeTable(pieces, left_lengths, rids)


def _stray() -> re.Pattern[str]:
    """A character outside the byte-level alphabet."""
    return re.compile(f"[^{re.escape(''.join(byte_to_char().values()))}]")


def _to_latin1() -> dict[int, int]:
    """Byte-level characters to the latin-1 characters of their bytes."""
    table = byte_to_char()
    return str.maketrans("".join(table.values()), "".join(map(chr, table)))


def _vocab_bytes(vocab: dict[str, int]) -> dict[str, bytes]:
    """The bytes of every byte-level spelled vocabulary entry (others, e.g. special tokens
    kept in the vocabulary, are left out: no merge may use them)."""
    stray, to_latin1 = _stray(), _to_latin1()
    tokens = list(vocab)
    joined = "".join(tokens)
    if not stray.search(joined):
        # Every entry is byte-level spelled (one character per byte): translate all of them
        # in one call and cut the bytes at the entries' lengths.
        data = joined.translate(to_latin1).encode("latin-1")
        ends = list(accumulate(map(len, tokens)))
        return dict(zip(tokens, map(data.__getitem__, map(slice, [0, *ends[:-1]], ends))))
    out = {}
    for tok in tokens:
        if stray.search(tok):
            continue
        out[tok] = tok.translate(to_latin1).encode("latin-1")
    return out


def split_by_length(merged: Sequence[Merge], weights: list[int]) -> list[frozenset[int]]:
    """The merges' piece lengths in len(weights) groups whose checking costs are about in
    proportion to `weights`. Whole lengths, not interleaved slices: merge_order.failing_merges simulates
    each length as one group, and a group cut in parts costs more than it whole (more numpy
    calls, and small parts fall to the plain rule)."""
    count: dict[int, int] = {}
    for n in piece_lengths(merged):
        if n > 2:  # two bytes always pass: no work
            count[n] = count.get(n, 0) + 1
    steps = {n: c * (n - 1) for n, c in count.items()}  # the simulation's steps per length
    groups: list[set[int]] = [set() for _ in weights]
    load = [0] * len(weights)
    for n in sorted(steps, key=steps.__getitem__, reverse=True):
        k = min(range(len(weights)), key=lambda k: (load[k] + steps[n]) / weights[k])
        groups[k].add(n)
        load[k] += steps[n]
    return [frozenset(g) for g in groups]


def check_merge_order(merged: Sequence[Merge], ranks: dict[bytes, int]) -> None:
    """Condition (2) of the module docstring for every merge (merge_order does the work).

    A cheaper sufficient test (no pair of a's trailing and b's leading parts ranks below t)
    was tried: a third of real merges fail it without ever crossing, so simulating is faster.
    """
    from q7x2_runtime.preprocess.merge_order import failing_merges  # numpy: only where checked

    bad = failing_merges(merged, ranks)
    if bad:
        raise NotExact(unreached(merged[bad[0]][3]))


def unreached(rank: int) -> str:
    """The NotExact reason for a merge that fails condition (2)."""
    return f"token {rank} is not reached by its own merge under rank order"
