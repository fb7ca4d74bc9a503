"""Condition (2) of fast_bpe: does rank-order merging of each merge's result, using only
lower ranks, end in exactly the merge's two parts?

`merges_to` is the rule for one merge, written plainly. `failing_merges` runs the same rule
for all ~150k merges of a real vocabulary at once: merges whose results have the same length
go through the same number of steps, so they are simulated together, one numpy row each
(about 0.45 s instead of 1.2 s of per-merge Python on the real Qwen tokenizer). Small groups
(the few very long tokens) take the plain rule, where numpy's per-call cost would dominate.
Both give the same answer for every merge (tests/preprocess/test_merge_order.py).

Each step needs the ranks of the two new pairs, i.e. of byte spans of the rows' pieces. For
pieces of up to 17 bytes (all but ~1% of merges) those spans are at most 16 bytes, and are
looked up in numpy (`SpanIndex`, exact); a dict lookup per span was two thirds of the time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from q7x2_runtime.preprocess.fast_bpe import Merge


_NONE = np.iinfo(np.int64).max  # the rank of a byte string that is no token
_ROWS_FOR_NUMPY = 64
_SPAN_BYTES = 16  # the longest span SpanIndex looks up: two 8-byte words
# keep the top k bytes of a big-endian word (k = 0..8)
_TOP_BYTES = np.array([0] + [((1 << 64) - 1) ^ ((1 << (64 - 8 * k)) - 1) for k in range(1, 9)], np.uint64)
_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(0x9E3779B97F4A7C15))
_SHIFT = np.uint64(33)


def merges_to(piece: bytes, left: bytes, limit: int, ranks: dict[bytes, int]) -> bool:
    """Does rank-order merging of `piece` with ranks < limit end in exactly [left, rest]?"""
    n = len(piece)
    if n == 2:
        return True  # two single bytes: nothing else can happen
    get = ranks.get
    parts = [piece[i : i + 1] for i in range(n)]
    pair_ranks = [get(piece[i : i + 2], limit) for i in range(n - 1)]
    while len(parts) > 2:
        best = min(pair_ranks)
        if best >= limit:
            return False
        i = pair_ranks.index(best)  # leftmost on ties, like both engines
        merged = parts[i] + parts[i + 1]
        parts[i : i + 2] = [merged]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = get(parts[i - 1] + merged, limit)
        if i < len(parts) - 1:
            pair_ranks[i] = get(merged + parts[i + 1], limit)
    # Merges never split, so a merge across the left|right boundary shows up here.
    return parts[0] == left


def failing_merges(merged: Sequence[Merge], ranks: dict[bytes, int], rows_for_numpy: int = _ROWS_FOR_NUMPY) -> list[int]:
    """Indices (ascending) of the merges in `merged` for which `merges_to` is False."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, (piece, _left, _right, _rank) in enumerate(merged):
        if len(piece) > 2:
            by_length[len(piece)].append(i)
    groups = []
    for n, idx in by_length.items():
        group = [merged[i] for i in idx]
        byte = np.frombuffer(b"".join(g[0] for g in group), np.uint8).reshape(len(group), n)
        limit = np.fromiter((g[3] for g in group), np.int64, len(group))
        left_len = np.fromiter((len(g[1]) for g in group), np.int64, len(group))
        groups.append(_Group(np.asarray(idx, np.int64), byte, limit, left_len))
    return _failing(groups, ranks, _pair_ranks(ranks), lambda: SpanIndex.of(ranks), rows_for_numpy)


def failing_ranks(
    ranks: dict[bytes, int], lefts: bytes, lengths: frozenset[int], rows_for_numpy: int = _ROWS_FOR_NUMPY
) -> list[int] | None:
    """The ranks (ascending) of the merges whose pieces are `lengths` bytes long and fail
    `merges_to`, the table given as the ranks alone plus each merge's left length (`lefts`, one
    byte per merge in rank order: fast_bpe's condition 1 puts merges in rank order). None if
    `lefts` does not fit the ranks. Built from whole columns: no Python object per merge."""
    blob, lens, values = _columns(ranks)
    offsets = np.cumsum(lens) - lens
    multi = np.nonzero(lens > 1)[0]
    multi = multi[np.argsort(values[multi], kind="stable")]  # the merges, in rank order
    left_len = np.frombuffer(lefts, np.uint8).astype(np.int64)
    if len(multi) != len(left_len):
        return None
    groups = []
    for n in sorted(k for k in lengths if k > 2):
        idx = np.nonzero(lens[multi] == n)[0]
        if idx.size:
            rows = multi[idx]
            byte = blob[offsets[rows][:, None] + np.arange(n)]
            groups.append(_Group(values[rows], byte, values[rows], left_len[idx]))
    two = np.nonzero(lens == 2)[0]
    pair_rank = np.full((256, 256), _NONE, np.int64)
    pair_rank[blob[offsets[two]], blob[offsets[two] + 1]] = values[two]
    return _failing(groups, ranks, pair_rank, lambda: SpanIndex.from_columns(blob, lens, values), rows_for_numpy)


def _columns(ranks: dict[bytes, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tokens' bytes back to back, each one's length and its rank, in the dict's order."""
    keys = list(ranks)
    lens = np.fromiter(map(len, keys), np.int64, len(keys))
    values = np.fromiter(ranks.values(), np.int64, len(keys))
    return np.frombuffer(b"".join(keys), np.uint8), lens, values


@dataclass(frozen=True)
class _Group:
    """Merges whose pieces have one length n: what names them in the answer (an index or the
    rank), their bytes (one row of n each), ranks and left lengths."""

    idx: np.ndarray
    byte: np.ndarray
    limit: np.ndarray
    left_len: np.ndarray


def _failing(groups: list[_Group], ranks: dict[bytes, int], pair_rank: np.ndarray, make_index, rows_for_numpy: int) -> list[int]:
    """The merges of `groups` failing `merges_to` (`pair_rank`: `_pair_ranks(ranks)`)."""
    numpy_groups = [g for g in groups if len(g.idx) >= rows_for_numpy]
    index = make_index() if any(g.byte.shape[1] <= _SPAN_BYTES + 1 for g in numpy_groups) else None
    bad: list[int] = []
    for g in groups:
        n = g.byte.shape[1]
        if len(g.idx) < rows_for_numpy:
            pieces = [row.tobytes() for row in g.byte]
            bad += [
                int(i) for i, piece, limit, k in zip(g.idx, pieces, g.limit.tolist(), g.left_len.tolist())
                if not merges_to(piece, piece[:k], limit, ranks)
            ]  # fmt: skip
            continue
        spans = index.spans(g.byte) if index is not None and n <= _SPAN_BYTES + 1 else _DictSpans(g.byte, ranks)
        failed = _failing_rows(g.byte, g.limit, g.left_len, pair_rank, spans)
        bad += g.idx[failed].tolist()
    return sorted(bad)


class _DictSpans:
    """Ranks of spans of a group's pieces, one dict lookup each (any length)."""

    def __init__(self, byte: np.ndarray, ranks: dict[bytes, int]) -> None:
        self._pieces = [row.tobytes() for row in byte]
        self._get = ranks.get

    def __call__(self, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray | list[int]:
        get, pieces = self._get, self._pieces
        return [get(pieces[r][a:b], _NONE) for r, a, b in zip(rows.tolist(), start.tolist(), end.tolist())]


def _fmix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit reaches every output bit."""
    x = x ^ (x >> _SHIFT)
    x = x * _MIX[0]
    x = x ^ (x >> _SHIFT)
    x = x * _MIX[1]
    return x ^ (x >> _SHIFT)


def _mix(w0: np.ndarray, w1: np.ndarray, length: np.ndarray) -> np.ndarray:
    """A 64-bit hash of (w0, w1, length); SpanIndex compares the words too, so it only sorts."""
    return _fmix(w0 ^ _fmix(w1 ^ (length * _MIX[2])))


class SpanIndex:
    """The ranks of the tokens of 2 to 16 bytes, looked up by value many at a time, exactly.

    A byte string is two big-endian 8-byte words, zero-padded, and its length: that triple
    determines it. The table is sorted by a hash of the triple; a lookup finds the one entry
    with the query's hash and accepts it only if its triple is the query's, so the hash can
    only cost a miss if two tokens shared one, which `of` rules out (None: use dict lookups)."""

    def __init__(self, hashes: np.ndarray, words: np.ndarray, lengths: np.ndarray, ranks: np.ndarray) -> None:
        self._hashes, self._words, self._lengths, self._ranks = hashes, words, lengths, ranks

    @classmethod
    def of(cls, ranks: dict[bytes, int]) -> SpanIndex | None:
        return cls.from_columns(*_columns(ranks))

    @classmethod
    def from_columns(cls, blob: np.ndarray, lens: np.ndarray, values: np.ndarray) -> SpanIndex | None:
        """From every token's bytes (`blob`: back to back, lens[i] each) and rank."""
        kept = (lens >= 2) & (lens <= _SPAN_BYTES)
        sel = np.nonzero(kept)[0]
        if not sel.size:
            return None
        # each kept token's bytes into its zero-padded row: one scatter of the kept bytes
        n = lens[sel]
        row = np.repeat(np.arange(len(sel)), n)
        column = np.arange(len(row)) - np.repeat(np.cumsum(n) - n, n)
        padded = np.zeros((len(sel), _SPAN_BYTES), np.uint8)
        padded[row, column] = blob[np.repeat(kept, lens)]
        words = padded.view(">u8").astype(np.uint64)  # (tokens, 2)
        lengths = lens[sel].astype(np.uint64)
        hashes = _mix(words[:, 0], words[:, 1], lengths)
        order = np.argsort(hashes, kind="stable")
        hashes = hashes[order]
        if np.any(hashes[1:] == hashes[:-1]):
            return None
        return cls(hashes, words[order], lengths[order], values[sel][order])

    def spans(self, byte: np.ndarray):
        """A lookup of spans of a group's pieces (`byte`: one row of n <= 17 bytes each):
        called with rows, starts and ends, the ranks of the spans (_NONE for no token)."""
        m, n = byte.shape
        padded = np.zeros((m, n + 2 * _SPAN_BYTES), np.uint64)
        padded[:, :n] = byte
        # window[r, a]: bytes a..a+7 of row r as one big-endian word (zeros past the end)
        window = np.zeros((m, n + _SPAN_BYTES), np.uint64)
        for k in range(8):
            window |= padded[:, k : k + n + _SPAN_BYTES] << np.uint64(56 - 8 * k)

        def lookup(rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
            length = end - start
            w0 = window[rows, start] & _TOP_BYTES[np.minimum(length, 8)]
            w1 = window[rows, start + 8] & _TOP_BYTES[np.clip(length - 8, 0, 8)]
            return self.ranks_of(w0, w1, length.astype(np.uint64))

        return lookup

    def ranks_of(self, w0: np.ndarray, w1: np.ndarray, length: np.ndarray) -> np.ndarray:
        h = _mix(w0, w1, length)
        i = np.minimum(np.searchsorted(self._hashes, h), len(self._hashes) - 1)
        words = self._words[i]
        hit = (self._hashes[i] == h) & (words[:, 0] == w0) & (words[:, 1] == w1) & (self._lengths[i] == length)
        return np.where(hit, self._ranks[i], _NONE)


def _pair_ranks(ranks: dict[bytes, int]) -> np.ndarray:
    """256 x 256: the rank of every two-byte token, _NONE elsewhere."""
    table = np.full((256, 256), _NONE, np.int64)
    two = [k for k in ranks if len(k) == 2]
    if two:
        b = np.frombuffer(b"".join(two), np.uint8).reshape(-1, 2)
        table[b[:, 0], b[:, 1]] = [ranks[k] for k in two]
    return table


def _failing_rows(byte: np.ndarray, limit: np.ndarray, left_len: np.ndarray, pair_rank: np.ndarray, spans) -> np.ndarray:
    """`merges_to` for merges whose pieces are all n bytes long (`byte`: one row each): the
    rows for which it is False.

    A row's parts are the spans between its live boundaries 0 < j < n, kept as a linked list
    (prv/nxt by byte position); pr[r, j] is the rank of the pair of parts meeting at j. Each
    step merges, in every row, the pair of lowest rank (argmin: leftmost on ties), exactly as
    `merges_to` does; after n - 2 steps two parts are left."""
    m, n = byte.shape
    pr = np.full((m, n + 1), _NONE, np.int64)
    pr[:, 1:n] = pair_rank[byte[:, :-1], byte[:, 1:]]
    nxt = np.tile(np.arange(1, n + 2, dtype=np.int64), (m, 1))
    prv = np.tile(np.arange(-1, n, dtype=np.int64), (m, 1))
    ok = np.ones(m, bool)
    rows = np.arange(m)
    for step in range(n - 2):
        j = pr[rows].argmin(axis=1)
        reachable = pr[rows, j] < limit[rows]
        ok[rows[~reachable]] = False
        rows, j = rows[reachable], j[reachable]
        if rows.size == 0:
            break
        p, q = prv[rows, j], nxt[rows, j]  # the merged part now spans p..q
        nxt[rows, p] = q
        prv[rows, q] = p
        pr[rows, j] = _NONE
        if step == n - 3:
            break  # two parts left: no pair needs a rank any more
        before = p >= 1  # the pair of the part before and the merged one
        rb, pb = rows[before], p[before]
        pr[rb, pb] = spans(rb, prv[rb, pb], q[before])
        after = q <= n - 1  # the pair of the merged part and the one after
        ra, qa = rows[after], q[after]
        pr[ra, qa] = spans(ra, p[after], nxt[ra, qa])
    ok &= nxt[:, 0] == left_len  # the first live boundary ends the left part
    return np.nonzero(~ok)[0]
