"""The sample checkpoint loads through transformers and is byte-identical on every run."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from q7x2_runtime.errors import UserError
from q7x2_runtime.sample import make_sample


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s") / "sample"
    make_sample(out)
    return out


def test_layout(sample: Path) -> None:
    model = sample / "model"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json",
                 "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert (model / name).is_file(), name
    index = json.loads((model / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["tie_word_embeddings"] is False and cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert cfg["vocab_size"] % 128 == 0
    # no temporary siblings left behind
    assert [p.name for p in sample.parent.iterdir()] == ["sample"]


def test_tokenizer_loads_with_autotokenizer(sample: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(sample / "model"))
    raw = Tokenizer.from_file(str(sample / "model" / "tokenizer.json"))
    text = "The keeper wrote 12 words, café naïve.\n\n### Response:\n<|im_start|>hi<|im_end|><|endoftext|>"
    ids = tok(text)["input_ids"]
    assert ids == raw.encode(text).ids
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|endoftext|>"
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tok.convert_tokens_to_ids(special) < json.loads((sample / "model" / "config.json").read_text())["vocab_size"]
    assert tok.convert_tokens_to_ids("<|im_start|>") == tok.convert_tokens_to_ids("<|endoftext|>") + 1


def test_model_loads_with_transformers(sample: Path) -> None:
    import torch
    from safetensors.numpy import load_file
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(str(sample / "model"))
    index = json.loads((sample / "model" / "model.safetensors.index.json").read_text())
    state = model.state_dict()
    assert set(index["weight_map"]) == set(state)
    key = "model.layers.1.self_attn.k_proj.bias"
    stored = load_file(str(sample / "model" / index["weight_map"][key]))[key]
    assert torch.equal(state[key], torch.from_numpy(stored))
    with torch.no_grad():
        out = model(torch.arange(16).unsqueeze(0), labels=torch.arange(16).unsqueeze(0))
    assert torch.isfinite(out.loss)


def test_alpaca_parquet(sample: Path) -> None:
    table = pq.read_table(sample / "data" / "alpaca.parquet")
    assert table.column_names == ["instruction", "input", "output", "text"]
    assert table.num_rows >= 300
    row = table.slice(0, 1).to_pylist()[0]
    assert row["output"] in row["text"] and row["instruction"] in row["text"]


def test_deterministic_bytes_and_replaces_previous(sample: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    subprocess.run([sys.executable, "-m", "q7x2_runtime.cli", "make-sample", str(again)], check=True, capture_output=True)
    first = _digest_tree(again)
    assert first == _digest_tree(sample)
    make_sample(again)  # replacing a previous sample in place
    assert _digest_tree(again) == first


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError):
        make_sample(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_runs_without_torch(tmp_path: Path) -> None:
    """The operator's machine may have no torch: block it and make a sample."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pathlib import Path\n"
        "from q7x2_runtime.sample import make_sample\n"
        f"make_sample(Path({str(tmp_path / 'out')!r}))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "out" / "model" / "model.safetensors.index.json").is_file()
