"""The engine decision's on-disk form: lossless, and refused (decided afresh) when damaged."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from q7x2_runtime.preprocess import engine_cache
from q7x2_runtime.preprocess.engines import FAST, EngineSpec
from q7x2_runtime.preprocess.fast_bpe import FastBpeSpec


@given(st.dictionaries(st.binary(min_size=1, max_size=12), st.integers(0, 2**31 - 1)))
def test_ranks_round_trip_through_json(ranks):
    flat = json.loads(json.dumps(engine_cache._ranks_to(ranks), ensure_ascii=False))
    assert engine_cache._ranks_from(flat) == ranks


def _spec(ranks):
    fast = FastBpeSpec(pattern="p", pattern_name="qwen2", nfc=True, ranks=ranks, added_tokens={"<|x|>": 9},
                       normalized_added_tokens={})  # fmt: skip
    return EngineSpec(name=FAST, tokenizer_dir="/t", fast=fast, fallback_reason=None, eos_token_id=9, vocab_size=10,
                      tokenizer_sha256="a" * 64, tokenizer_json_sha256="b" * 64)  # fmt: skip


def test_a_stored_decision_loads_back_equal_and_a_damaged_one_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_cache, "cache_dir", lambda: tmp_path)
    spec = _spec({bytes([b]): b for b in range(256)} | {b"ab": 300, "é".encode(): 301})
    engine_cache.store("k", spec)
    assert engine_cache.load("k", "/t") == spec
    path = tmp_path / "k.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for damage in (
        lambda d: d["fast"]["ranks"]["lengths"].pop(),  # lengths no longer add up
        lambda d: d["fast"]["ranks"].__setitem__("bytes", d["fast"]["ranks"]["bytes"] + "\u0100"),  # not a byte
        lambda d: d["fast"]["ranks"]["ranks"].__setitem__(0, "1"),  # a rank that is no integer
        lambda d: d["fast"]["ranks"].update(bytes="a" * len(d["fast"]["ranks"]["ranks"]), lengths=[1] * len(d["fast"]["ranks"]["ranks"])),  # one token, many ranks
    ):
        broken = json.loads(json.dumps(data))
        damage(broken)
        path.write_text(json.dumps(broken, ensure_ascii=False), encoding="utf-8")
        assert engine_cache.load("k", "/t") is None
