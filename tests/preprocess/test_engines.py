"""The fast engine gives exactly AutoTokenizer's ids, and is refused when it could not."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from q7x2_runtime.errors import UserError
from q7x2_runtime.preprocess.engines import _NEVER_ALLOWED, FAST, HF, build_engine, choose_engine, flatten
from q7x2_runtime.preprocess.fast_bpe import GPT2_PATTERN, NotExact, fast_bpe_spec
from tests.preprocess.conftest import SPECIALS, edit_tokenizer, write_tokenizer

HOSTILE = [
    "",
    " ",
    "<|endoftext|>",
    "text<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant",
    "<|im_end|><|im_end|><|endoftext|>x<|endoftext",
    "<|im_start<|im_end|>|>",
    "<|IM_END|> < |im_end| >",
    "naïve café 数据处理 日本語 한국어 Ελληνικά Русский مرحبا हिन्दी ภาษาไทย",
    "😀👍🏽👨‍👩‍👧🇺🇸 1\ufe0f\u20e3 \U0001fae8",
    " " * 50 + "\n" * 9 + "\t" * 4 + "x" + "   \r\n\r\n  ",
    "   leading   and trailing   ",
    "\u00a0\u2003\u3000\u2028\u2029\u0085 unicode spaces",
    unicodedata.normalize("NFD", "Crème brûlée à la française, Åström, 한국어"),
    "e\u0301 a\u0308 \u1100\u1161\u11a8 \u212b \u2126 ﬁ ẞ",
    "It's I'M you'RE they'Ve he'LL she'D 'ſ 'S 'K 'T''s",
    "1234567890 ٣٤٥ १२३ ½ ² Ⅷ ６７８",
    "def f(x):\n    return x**2  # comment\n\n\n",
    "\x00\x01\x7f control \x1b[31m escapes",
    "a" * 3000,
    "ab" * 1500 + "aab" * 700,  # one long piece with many equal-rank pairs (tie order)
    "".join(chr(0x61 + (i * 7919) % 26) for i in range(4000)),  # a long letters-only piece
    "\u4e00\u4e8c" * 800,
]


def test_fast_engine_chosen_for_a_qwen2_shaped_tokenizer(qwen_tokenizer):
    spec = choose_engine(str(qwen_tokenizer))
    assert spec.name == FAST, spec.fallback_reason
    assert spec.fast.pattern_name == "qwen2" and spec.fast.nfc
    assert set(spec.fast.added_tokens) == set(SPECIALS)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_texts_match_autotokenizer(qwen_tokenizer, hf_tokenizer, text):
    engine = build_engine(choose_engine(str(qwen_tokenizer)))
    assert engine.encode([text]) == [hf_tokenizer(text)["input_ids"]]


_pieces = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(SPECIALS + ["<|", "|>", "'s", "'LL", " ", "\n", "\r\n", "\t", "  ", "\u00a0", "\u0301", "😀"]),
    st.text(alphabet=" \n\t\r", max_size=12),
    st.text(alphabet="aeiouéèüñçÅ\u0301\u0308 数据日本한국", max_size=20),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_pieces, max_size=8).map("".join))
def test_random_texts_match_autotokenizer(qwen_tokenizer, hf_tokenizer, text):
    engine = _engine_for(qwen_tokenizer)
    want = hf_tokenizer(text)["input_ids"]
    assert engine.encode_one(text) == want
    assert engine.encode_array(text).tolist() == want


@pytest.mark.parametrize("eod", [None, 7])
def test_flat_ids_are_the_documents_back_to_back(qwen_tokenizer, hf_tokenizer, eod):
    """What the workers write: the buffer path's ids, with the eod after each document, equal
    HF's; including a text spelling the fast engine's never-allowed special token, which must
    stay plain text."""
    engine = _engine_for(qwen_tokenizer)
    texts = [*HOSTILE, f"a {_NEVER_ALLOWED} b", _NEVER_ALLOWED, "<|endoftext|> x"]
    texts = [t for t in texts if t]
    ids, lengths = engine.encode_flat(texts, eod)
    want = [hf_tokenizer(t)["input_ids"] + ([eod] if eod is not None else []) for t in texts]
    assert ids.dtype == np.int32 and lengths.dtype == np.int64
    assert lengths.tolist() == [len(w) for w in want]
    assert ids.tolist() == [i for w in want for i in w]
    hf_ids, hf_lengths = flatten([hf_tokenizer(t)["input_ids"] for t in texts], eod)  # the HF engine's path
    assert hf_ids.tolist() == ids.tolist() and hf_lengths.tolist() == lengths.tolist()
    empty_ids, empty_lengths = engine.encode_flat([], eod)
    assert empty_ids.size == 0 and empty_lengths.size == 0


_ENGINES: dict = {}


def _engine_for(path):
    if path not in _ENGINES:
        _ENGINES[path] = build_engine(choose_engine(str(path)))
    return _ENGINES[path]


def test_special_tokens_inside_the_trained_vocabulary(tmp_path):
    # The trainer's own special tokens sit in the BPE vocabulary (ids 0..2) but no merge
    # produces them; the fast engine must still split them out of text like HF.
    from transformers import AutoTokenizer

    path = write_tokenizer(tmp_path / "tv", specials_in_vocab=True)
    spec = choose_engine(str(path))
    assert spec.name == FAST, spec.fallback_reason
    engine, hf = build_engine(spec), AutoTokenizer.from_pretrained(path)
    for text in HOSTILE:
        assert engine.encode([text]) == [hf(text)["input_ids"]]


def test_overlapping_and_non_special_added_tokens(qwen_tokenizer, tmp_path):
    # HF matches added tokens leftmost-longest on the raw text, special or not.
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoTokenizer

    tok = Tokenizer.from_file(str(qwen_tokenizer / "tokenizer.json"))
    tok.add_tokens(["<tool_call>", "<tool", "call>", "ab", "数据", "café"])  # normalized=True
    tok.add_tokens([AddedToken("</tool_call>", normalized=False, special=False)])
    tok.add_tokens([AddedToken("é!", normalized=False, special=False)])  # matched on the raw text only
    tok.add_special_tokens(["<|im_end|>x", "<|fim_prefix|>"])
    path = tmp_path / "added"
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text((qwen_tokenizer / "tokenizer_config.json").read_text())
    spec = choose_engine(str(path))
    assert spec.name == FAST, spec.fallback_reason
    hf, engine = AutoTokenizer.from_pretrained(path), build_engine(spec)
    texts = HOSTILE + [
        "<tool_call>x</tool_call> <tool <toolcall> call> about abab 数据数据",
        "<|im_end|>x<|im_end|>y<|im_end|>xx <|fim_prefix|><|fim_prefix",
        "cafe\u0301 café CAFÉ caf<|im_end|>é",
        "e\u0301! ab",  # NFC makes a raw token appear: HF does not split it out there
    ]
    want = [hf(t)["input_ids"] for t in texts]
    assert engine.encode(texts) == want
    ids, lengths = engine.encode_flat(texts, None)
    assert ids.tolist() == [i for w in want for i in w] and lengths.tolist() == [len(w) for w in want]


def _swap_two_merges(data):
    merges = data["model"]["merges"]
    merges[10], merges[11] = merges[11], merges[10]


def _break_reachability(data):
    # Move a merge whose result is built from another merge's result ahead of it.
    merges = data["model"]["merges"]
    vocab = data["model"]["vocab"]
    join = (lambda m: "".join(m.split(" ", 1))) if isinstance(merges[0], str) else (lambda m: "".join(m))
    results = [join(m) for m in merges]
    for i, m in enumerate(merges):
        left = m.split(" ", 1)[0] if isinstance(m, str) else m[0]
        if left in results[:i]:
            j = results.index(left)
            rid_i, rid_j = vocab[results[i]], vocab[results[j]]
            merges[i], merges[j] = merges[j], merges[i]
            vocab[results[i]], vocab[results[j]] = rid_j, rid_i
            return
    raise AssertionError("no dependent merge found")


def _bos_template(data):
    bos = next(t["id"] for t in data["added_tokens"] if t["content"] == "<|im_start|>")
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [bos], "tokens": ["<|im_start|>"]}},
    }


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d.__setitem__("normalizer", {"type": "NFKC"}), "normalizer"),
        (_swap_two_merges, "merge"),
        (_break_reachability, "merge"),
        (lambda d: d["model"].__setitem__("dropout", 0.1), "dropout"),
        (lambda d: d["added_tokens"][2].__setitem__("lstrip", True), "lstrip"),
        (lambda d: d["added_tokens"][2].__setitem__("single_word", True), "single_word"),
        (_bos_template, "post-processor"),
    ],
)
def test_falls_back_to_hf_when_not_provably_exact(qwen_tokenizer, tmp_path, edit, reason):
    from transformers import AutoTokenizer

    path = edit_tokenizer(qwen_tokenizer, tmp_path / "edited", edit, tokenizer_class="PreTrainedTokenizerFast")
    spec = choose_engine(str(path))
    assert spec.name == HF and reason in spec.fallback_reason
    if reason != "dropout":  # dropout makes HF itself random
        hf = AutoTokenizer.from_pretrained(path)
        assert build_engine(spec).encode(HOSTILE[:8]) == [hf(t)["input_ids"] for t in HOSTILE[:8]]


def test_inspects_the_pipeline_transformers_builds(qwen_tokenizer, tmp_path):
    # Qwen2Tokenizer in transformers rebuilds the normalizer itself, so an odd normalizer in
    # tokenizer.json does not reach the ids; the decision follows what actually runs.
    from transformers import AutoTokenizer

    path = edit_tokenizer(qwen_tokenizer, tmp_path / "q", lambda d: d.__setitem__("normalizer", {"type": "NFKC"}))
    spec, hf = choose_engine(str(path)), AutoTokenizer.from_pretrained(path)
    assert build_engine(spec).encode(HOSTILE) == [hf(t)["input_ids"] for t in HOSTILE]


def test_hf_engine_when_forced(qwen_tokenizer, hf_tokenizer):
    spec = choose_engine(str(qwen_tokenizer), force=HF)
    assert spec.name == HF
    assert build_engine(spec).encode(HOSTILE[:5]) == [hf_tokenizer(t)["input_ids"] for t in HOSTILE[:5]]


def test_gpt2_style_pretokenizer_is_recognised():
    data = {
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "added_tokens": [],
        "model": {"type": "BPE", "vocab": {}, "merges": []},
    }
    with pytest.raises(NotExact, match="byte"):  # empty vocab: the pattern passed, the model did not
        fast_bpe_spec(data)
    data["pre_tokenizer"]["add_prefix_space"] = True
    with pytest.raises(NotExact, match="prefix"):
        fast_bpe_spec(data)
    assert GPT2_PATTERN.startswith("'s")


def test_unicode_classes_agree_between_hf_and_tiktoken_regex_engines():
    """The fast path relies on Oniguruma (HF) and fancy-regex (tiktoken) agreeing on \\p{L},
    \\p{N}, \\s and the case-insensitive contractions for every code point."""
    from q7x2_runtime.preprocess.unicode_classes import CLASSES, disagreement

    assert [disagreement(c) for c in CLASSES] == [None] * len(CLASSES)


def test_unicode_class_disagreement_means_hf(qwen_tokenizer):
    from q7x2_runtime.preprocess.engines import EngineChecks

    spec = choose_engine(str(qwen_tokenizer), checks=EngineChecks(unicode_classes=lambda: "classes differ"))
    assert spec.name == HF and spec.fallback_reason == "classes differ"
    with pytest.raises(UserError, match="classes differ"):
        choose_engine(str(qwen_tokenizer), force=FAST, checks=EngineChecks(unicode_classes=lambda: "classes differ"))


def test_unicode_verdict_is_kept_per_library_versions(tmp_path, monkeypatch):
    from q7x2_runtime.preprocess import unicode_classes

    calls = []
    monkeypatch.setattr(unicode_classes, "disagreement", lambda c: calls.append(c) or None)
    assert unicode_classes.cached_verdict(tmp_path) == (False, None)
    assert unicode_classes.check(tmp_path) is None and len(calls) == len(unicode_classes.CLASSES)
    assert unicode_classes.cached_verdict(tmp_path) == (True, None)
    assert unicode_classes.check(tmp_path) is None and len(calls) == len(unicode_classes.CLASSES)


def test_the_verdict_an_image_build_recorded_comes_before_the_user_cache(tmp_path, monkeypatch):
    from q7x2_runtime.preprocess import unicode_classes

    monkeypatch.setenv("Q7X2_SHARE_DIR", str(tmp_path / "share"))
    calls = []
    monkeypatch.setattr(unicode_classes, "disagreement", lambda c: calls.append(c) or None)
    path, reason = unicode_classes.record_installation()
    assert reason is None and path.is_relative_to(tmp_path / "share") and len(calls) == len(unicode_classes.CLASSES)
    user = tmp_path / "user"
    assert unicode_classes.check(user) is None and len(calls) == len(unicode_classes.CLASSES)  # not computed again
    assert not (user / "unicode-classes").exists()
    unicode_classes.store_verdict(user, "a stale user verdict")
    assert unicode_classes.cached_verdict(user) == (True, None)  # the image's record wins
    assert unicode_classes.cached_verdict(None) == (False, None)  # no cache: computed afresh
    path.write_text("{half")  # an unreadable record is passed over, never trusted
    assert unicode_classes.cached_verdict(user) == (True, "a stale user verdict")
    monkeypatch.setenv("Q7X2_SHARE_DIR", str(tmp_path / "share" / "unicode-classes" / path.name))
    with pytest.raises(OSError):
        unicode_classes.record_installation()  # a build that cannot record fails, it never skips


def test_tokenizer_identity_is_hashed_again_whenever_a_file_changes(tmp_path):
    """The identity is computed once per process for unchanged files (a run asks several
    times), but a rewrite, even of the same size with the old mtime put back, changes it."""
    import hashlib
    import os

    from q7x2_runtime.preprocess import engines

    (tmp_path / "tokenizer.json").write_text('{"a": 1}')
    first = engines.tokenizer_identity(str(tmp_path))
    assert engines.tokenizer_identity(str(tmp_path)) == first
    st = (tmp_path / "tokenizer.json").stat()
    (tmp_path / "tokenizer.json").write_text('{"a": 2}')
    os.utime(tmp_path / "tokenizer.json", ns=(st.st_atime_ns, st.st_mtime_ns))
    second = engines.tokenizer_identity(str(tmp_path))
    assert second != first
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert engines.tokenizer_identity(str(tmp_path)) not in (first, second)
    assert engines._file_sha256(tmp_path / "tokenizer.json") == hashlib.sha256(b'{"a": 2}').hexdigest()
