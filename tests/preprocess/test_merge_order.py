"""The merge-order check that runs all merges of one length together answers exactly as the
plain one-merge rule does, on real and hostile merge tables."""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from q7x2_runtime.preprocess.fast_bpe import merge_table
from q7x2_runtime.preprocess.merge_order import SpanIndex, failing_merges, failing_ranks, merges_to


def _plain(merged, ranks) -> list[int]:
    return [i for i, (piece, left, _right, rank) in enumerate(merged) if not merges_to(piece, left, rank, ranks)]


def _table(alphabet: bytes, merges: list[tuple[int, int]]):
    """A merge table over `alphabet` (ids 0..), each merge joining two earlier tokens; the
    ranks given to the results are shuffled by the caller to make some merges fail."""
    tokens = [bytes([b]) for b in alphabet]
    merged = []
    for a, b in merges:
        left, right = tokens[a % len(tokens)], tokens[b % len(tokens)]
        piece = left + right
        if piece in tokens:
            continue
        tokens.append(piece)
        merged.append((piece, left, right, len(tokens) - 1))
    return tokens, merged


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    merges=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), min_size=1, max_size=300),
    shuffle_seed=st.integers(0, 2**32 - 1),
    shuffled=st.integers(0, 40),
)
def test_grouped_check_agrees_with_the_plain_rule(merges, shuffle_seed, shuffled) -> None:
    tokens, merged = _table(b"ab c", merges)
    ranks = {t: i for i, t in enumerate(tokens)}
    rnd = random.Random(shuffle_seed)
    results = [m[0] for m in merged]
    for _ in range(shuffled if len(results) > 1 else 0):  # swap ranks: breaks some merges' order
        x, y = rnd.sample(results, 2)
        ranks[x], ranks[y] = ranks[y], ranks[x]
    merged = [(p, left, right, ranks[p]) for p, left, right, _ in merged]
    want = _plain(merged, ranks)
    # rows_for_numpy=1: every length goes through the grouped simulation
    assert failing_merges(merged, ranks, rows_for_numpy=1) == want
    assert failing_merges(merged, ranks) == want
    # The workers' form: the ranks and each merge's left length, in rank order.
    in_rank_order = sorted(merged, key=lambda m: m[3])
    lefts = bytes(len(m[1]) for m in in_rank_order)
    lengths = frozenset(len(m[0]) for m in merged)
    wanted_ranks = sorted(merged[i][3] for i in want)
    assert failing_ranks(ranks, lefts, lengths, rows_for_numpy=1) == wanted_ranks
    assert failing_ranks(ranks, lefts, lengths) == wanted_ranks
    assert failing_ranks(ranks, lefts + b"\x01", lengths) is None  # lefts that do not fit


def test_real_qwen_tokenizer_passes_and_broken_ranks_are_found(real_qwen) -> None:
    model = json.loads((real_qwen / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merged, ranks = merge_table(model)
    assert failing_merges(merged, ranks) == []
    rnd = random.Random(7)
    longer = [m[0] for m in merged if len(m[0]) > 3]
    for _ in range(2000):
        x, y = rnd.sample(longer, 2)
        ranks[x], ranks[y] = ranks[y], ranks[x]
    broken = [(p, left, right, ranks[p]) for p, left, right, _ in merged]
    want = _plain(broken, ranks)
    assert want, "swapping ranks breaks some merges"
    assert failing_merges(broken, ranks) == want


def test_the_span_index_finds_exactly_the_tokens(real_qwen) -> None:
    import numpy as np

    model = json.loads((real_qwen / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    _, ranks = merge_table(model)
    index = SpanIndex.of(ranks)
    assert index is not None
    rnd = random.Random(3)
    tokens = [t for t in ranks if 2 <= len(t) <= 16]
    # every token, and strings that are none: one byte changed, cut, extended, zero-padded
    probes = tokens + [t[:-1] + bytes([t[-1] ^ 1]) for t in tokens[:5000]] + [t + b"\0" for t in tokens[:5000]]
    probes += [t[: len(t) // 2 + 1] for t in rnd.sample(tokens, 5000)] + [b"\0" * n for n in range(2, 17)]
    probes = [p for p in probes if len(p) <= 16]
    padded = np.frombuffer(b"".join(p.ljust(16, b"\0") for p in probes), ">u8").astype(np.uint64).reshape(-1, 2)
    got = index.ranks_of(padded[:, 0], padded[:, 1], np.fromiter(map(len, probes), np.uint64, len(probes)))
    missing = np.iinfo(np.int64).max
    assert got.tolist() == [ranks.get(p, missing) for p in probes]
