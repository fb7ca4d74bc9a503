"""The characters NFC leaves alone (nfc_inert): the shipped table holds only characters this
Python's Unicode data proves inert, and HF's own NFC (the one the fast engine must match)
leaves any text made of them unchanged, while everything else still goes through it."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from q7x2_runtime.preprocess.nfc_inert import composition_seconds, inert_ranges, is_inert, needs_nfc_search
from q7x2_runtime.preprocess.nfc_inert_ranges import INERT_RANGES

SECONDS = composition_seconds()
INERT = [cp for a, b in INERT_RANGES for cp in range(a, b + 1)]
NEEDS_NFC = needs_nfc_search(list(INERT_RANGES))


def _hf_nfc(text: str) -> str:
    from tokenizers import normalizers

    return normalizers.NFC().normalize_str(text)


def test_the_table_is_what_this_pythons_unicode_data_gives() -> None:
    if unicodedata.unidata_version == "14.0.0":  # the version it was generated from
        assert list(INERT_RANGES) == inert_ranges()
    # On any version every character in it stays inert (Unicode's stability policies).
    assert all(is_inert(cp, SECONDS) for cp in INERT)


def test_hf_nfc_leaves_every_inert_character_alone_in_any_neighbourhood() -> None:
    text = "".join(map(chr, INERT))
    assert _hf_nfc(text) == text
    assert _hf_nfc(text[::-1]) == text[::-1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(INERT), min_size=1, max_size=40))
def test_any_text_of_inert_characters_is_its_own_nfc(cps) -> None:
    text = "".join(map(chr, cps))
    assert NEEDS_NFC(text) is None
    assert _hf_nfc(text) == text


def test_what_nfc_changes_is_always_found() -> None:
    # composing pairs, singletons, excluded and non-starter decompositions, Hangul jamo,
    # reordering marks, a precomposed character followed by a mark that composes with it
    samples = ["e\u0301", "\u212b", "\u2126", "\u0344", "\u1100\u1161", "\uac00\u11a8", "a\u0316\u0301",
               "\u00ef\u0301", "\u0958", "\uf900", "\u0b47\u0b3e", "\U0001d15e"]  # fmt: skip
    for s in samples:
        assert NEEDS_NFC(s) is not None, s
    changed = [s for s in samples if _hf_nfc(s) != s]
    assert len(changed) >= 10  # the samples do exercise NFC


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30))
def test_a_text_the_table_lets_through_is_unchanged_by_hf_nfc(text) -> None:
    if NEEDS_NFC(text) is None:
        assert _hf_nfc(text) == text
