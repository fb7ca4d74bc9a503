"""Condition (2) of fast_bpe: does rank-order merging of each merge's result, using only
lower ranks, end in exactly the merge's two parts?

`merges_to` is the rule for one merge, written plainly. `failing_merges` runs the same rule
for all ~150k merges of a real vocabulary at once: merges whose results have the same length
go through the same number of steps, so they are simulated together, one numpy row each
(about 0.45 s instead of 1.2 s of per-merge Python on the real Qwen tokenizer). Small groups
(the few very long tokens) take the plain rule, where numpy's per-call cost would dominate.
Both give the same answer for every merge (tests/preprocess/test_merge_order.py).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

# (piece, left, right, rank) per merge, as fast_bpe's MergeTable
Merge = tuple[bytes, bytes, bytes, int]

_NONE = np.iinfo(np.int64).max  # the rank of a byte string that is no token
_ROWS_FOR_NUMPY = 64


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


def failing_merges(merged: list[Merge], ranks: dict[bytes, int], rows_for_numpy: int = _ROWS_FOR_NUMPY) -> list[int]:
    """Indices (ascending) of the merges in `merged` for which `merges_to` is False."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, (piece, _left, _right, _rank) in enumerate(merged):
        if len(piece) > 2:
            by_length[len(piece)].append(i)
    pair_rank = _pair_ranks(ranks)
    bad: list[int] = []
    for n, idx in by_length.items():
        if len(idx) < rows_for_numpy:
            bad += [i for i in idx if not merges_to(merged[i][0], merged[i][1], merged[i][3], ranks)]
        else:
            bad += _failing_of_length(n, [merged[i] for i in idx], idx, ranks, pair_rank)
    return sorted(bad)


def _pair_ranks(ranks: dict[bytes, int]) -> np.ndarray:
    """256 x 256: the rank of every two-byte token, _NONE elsewhere."""
    table = np.full((256, 256), _NONE, np.int64)
    two = [k for k in ranks if len(k) == 2]
    if two:
        b = np.frombuffer(b"".join(two), np.uint8).reshape(-1, 2)
        table[b[:, 0], b[:, 1]] = [ranks[k] for k in two]
    return table


def _failing_of_length(n: int, group: list[Merge], idx: list[int], ranks: dict[bytes, int], pair_rank: np.ndarray) -> list[int]:
    """`merges_to` for merges whose pieces are all n bytes long, one row each.

    A row's parts are the spans between its live boundaries 0 < j < n, kept as a linked list
    (prv/nxt by byte position); pr[r, j] is the rank of the pair of parts meeting at j. Each
    step merges, in every row, the pair of lowest rank (argmin: leftmost on ties), exactly as
    `merges_to` does; after n - 2 steps two parts are left."""
    get = ranks.get
    pieces = [m[0] for m in group]
    m = len(group)
    limit = np.fromiter((g[3] for g in group), np.int64, m)
    left_len = np.fromiter((len(g[1]) for g in group), np.int64, m)
    pr = np.full((m, n + 1), _NONE, np.int64)
    byte = np.frombuffer(b"".join(pieces), np.uint8).reshape(m, n)
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
        live = [pieces[r] for r in rows.tolist()]
        before = p >= 1  # the pair of the part before and the merged one
        start = prv[rows, p].tolist()
        pr[rows[before], p[before]] = [
            get(pc[a:b], _NONE) for pc, a, b, h in zip(live, start, q.tolist(), before.tolist()) if h
        ]
        after = q <= n - 1  # the pair of the merged part and the one after
        end = nxt[rows, np.minimum(q, n)].tolist()
        pr[rows[after], q[after]] = [
            get(pc[a:b], _NONE) for pc, a, b, h in zip(live, p.tolist(), end, after.tolist()) if h
        ]
    ok &= nxt[:, 0] == left_len  # the first live boundary ends the left part
    return [idx[k] for k in np.nonzero(~ok)[0].tolist()]
