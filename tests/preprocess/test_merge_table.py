"""merge_table: the columnar table gives exactly the per-merge tuples, and every broken rule
of condition (1) is named, whatever the merges are made of."""

from __future__ import annotations

import json

import pytest

from q7x2_runtime.preprocess.bytelevel import byte_to_char
from q7x2_runtime.preprocess.fast_bpe import MergeTable, NotExact, merge_table

B2C = byte_to_char()


def _model(merges: list, extra_vocab: dict[str, int] | None = None) -> dict:
    vocab = {c: i for i, c in enumerate(B2C.values())}
    next_id = len(vocab)
    for m in merges:
        parts = m.split(" ", 1) if isinstance(m, str) else m
        if isinstance(parts, list) and all(isinstance(p, str) for p in parts) and "".join(parts) not in vocab:
            vocab["".join(parts)] = next_id
            next_id += 1
    vocab.update(extra_vocab or {})
    return {"type": "BPE", "vocab": vocab, "merges": merges}


def test_the_table_is_the_merges_with_their_bytes_and_ranks(real_qwen) -> None:
    model = json.loads((real_qwen / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merged, ranks = merge_table(model)
    assert isinstance(merged, MergeTable) and len(merged) == len(model["merges"])
    to_bytes = {c: b for b, c in B2C.items()}
    for i in (0, 1, 1000, len(merged) - 1):
        left, right = model["merges"][i]
        lb, rb = bytes(map(to_bytes.__getitem__, left)), bytes(map(to_bytes.__getitem__, right))
        assert merged[i] == (lb + rb, lb, rb, model["vocab"][left + right]) == list(merged)[i]
        assert ranks[lb + rb] == model["vocab"][left + right]
    assert merged[-2:] == [merged[len(merged) - 2], merged[len(merged) - 1]]


@pytest.mark.parametrize(
    ("merges", "extra", "reason"),
    [
        (["Ġ t", "Ġt he", "x <unk>"], None, "refers to tokens outside the vocabulary"),
        (["Ġ t", "中 b"], {"中": 9000, "中b": 9001}, "is not byte-level spelled"),
        (["t h", "a b"], {"th": 9000, "ab": 800}, "do not increase in merge order"),
        ([["a", "bc"], ["ab", "c"]], {"bc": 300, "abc": 301, "ab": 302}, "do not increase in merge order"),
        ([["t", 5]], None, "is not a pair of tokens"),
        ([[1, 2]], None, "is not a pair of tokens"),
        (["th"], None, "is not a pair of tokens"),
        ([["t", "h", "e"]], None, "is not a pair of tokens"),
        ([7], None, "is not a pair of tokens"),
    ],
)
def test_a_broken_rule_is_named(merges, extra, reason) -> None:
    with pytest.raises(NotExact, match=reason):
        merge_table(_model(merges, extra))
