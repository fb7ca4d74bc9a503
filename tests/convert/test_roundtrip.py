"""HF -> mcore -> HF is bitwise identical, and the mcore files have Megatron's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from q7x2_runtime.cli import main
from q7x2_runtime.convert.output import MANIFEST, verify_manifest

from conftest import make_hf


def hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out = {}
    for name, shard in index["weight_map"].items():
        with safe_open(str(path / shard), "pt") as f:
            out[name] = f.get_tensor(name)
    return out


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


def roundtrip(hf: Path, tmp: Path, *extra: str) -> Path:
    mg, back = tmp / "mg", tmp / "back"
    assert main(["convert", "--load-dir", str(hf), "--save-dir", str(mg), *extra]) == 0
    assert main(["convert", "--load-model-type", "mg", "--save-model-type", "hf",
                 "--load-dir", str(mg), "--save-dir", str(back)]) == 0
    assert verify_manifest(mg) == [] and verify_manifest(back) == []
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")], "temporary directories left behind"
    return mg


@pytest.mark.parametrize(
    "fixture,tp,pp,layers",
    [
        ("tiny_hf", 1, 1, None),
        ("tiny_hf", 2, 1, None),
        ("tiny_hf", 1, 2, None),
        ("tiny_hf", 2, 2, None),
        ("tiny_hf_kv4", 4, 2, None),
        ("tiny_hf", 2, 2, "1,3"),
        ("tiny_hf_tied", 2, 2, None),
        ("tiny_hf_tied", 1, 1, None),
    ],
)
def test_roundtrip_bitwise(request, tmp_path: Path, fixture: str, tp: int, pp: int, layers: str | None) -> None:
    hf = request.getfixturevalue(fixture)
    extra = ["--tp", str(tp), "--pp", str(pp)] + (["--num-layer-list", layers] if layers else [])
    mg = roundtrip(hf, tmp_path, *extra)
    assert_bitwise_equal(hf_tensors(hf), hf_tensors(tmp_path / "back"))
    assert (mg / "latest_checkpointed_iteration.txt").read_text() == "1"
    names = sorted(p.parent.name for p in (mg / "iter_0000001").glob("*/model_optim_rng.pt"))
    if pp == 1:
        assert names == [f"mp_rank_{t:02d}" for t in range(tp)]
    else:
        assert names == sorted(f"mp_rank_{t:02d}_{p:03d}" for t in range(tp) for p in range(pp))
    # the tokenizer files come along from the HF folder recorded in the checkpoint
    assert (tmp_path / "back" / "tokenizer.json").read_text() == (hf / "tokenizer.json").read_text()


def test_rank_file_contents(tiny_hf: Path, tmp_path: Path) -> None:
    mg = tmp_path / "mg"
    assert main(["convert", "-i", str(tiny_hf), "-o", str(mg), "--tp", "2", "--pp", "2", "--num-layer-list", "1,3"]) == 0
    first = torch.load(mg / "iter_0000001/mp_rank_01_000/model_optim_rng.pt", weights_only=False)
    last = torch.load(mg / "iter_0000001/mp_rank_00_001/model_optim_rng.pt", weights_only=False)
    assert set(first) == {"args", "checkpoint_version", "iteration", "model", "num_floating_point_operations_so_far"}
    assert first["checkpoint_version"] == 3.0 and first["iteration"] == 1
    a = first["args"]
    assert (a.num_layers, a.hidden_size, a.num_attention_heads, a.tensor_model_parallel_size,
            a.pipeline_model_parallel_size, a.padded_vocab_size, a.add_position_embedding) == (4, 64, 4, 2, 2, 256, True)
    assert a.params_dtype == torch.bfloat16 and a.bf16
    m = first["model"]
    # hidden 64, 4 heads of 16, 2 groups: per rank one group = 2 q heads + k + v = 64 rows
    assert m["embedding.word_embeddings.weight"].shape == (128, 64)
    assert m["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (64, 64)
    assert m["decoder.layers.0.self_attention.linear_qkv.bias"].shape == (64,)
    assert m["decoder.layers.0.self_attention.linear_proj.weight"].shape == (64, 32)
    assert m["decoder.layers.0.mlp.linear_fc1.weight"].shape == (96, 64)
    assert m["decoder.layers.0.mlp.linear_fc2.weight"].shape == (64, 48)
    assert "decoder.layers.1.input_layernorm.weight" not in m and "output_layer.weight" not in m
    assert "decoder.layers.2.input_layernorm.weight" in last["model"]  # 3 layers, numbered locally
    assert "output_layer.weight" in last["model"] and "decoder.final_layernorm.weight" in last["model"]
    # qkv of rank 1 is group 1: q heads 2,3 then k head 1 then v head 1
    hf = hf_tensors(tiny_hf)
    qkv = m["decoder.layers.0.self_attention.linear_qkv.weight"]
    assert torch.equal(qkv[:32], hf["model.layers.0.self_attn.q_proj.weight"][32:64])
    assert torch.equal(qkv[32:48], hf["model.layers.0.self_attn.k_proj.weight"][16:32])
    assert torch.equal(qkv[48:], hf["model.layers.0.self_attn.v_proj.weight"][16:32])
    fc1 = m["decoder.layers.0.mlp.linear_fc1.weight"]
    assert torch.equal(fc1[:48], hf["model.layers.0.mlp.gate_proj.weight"][48:])
    assert torch.equal(fc1[48:], hf["model.layers.0.mlp.up_proj.weight"][48:])
    manifest = json.loads((mg / MANIFEST).read_text())
    assert len(manifest["files"]) == 4 and manifest["complete"]


def test_vocab_padding_roundtrip(tmp_path: Path) -> None:
    hf = make_hf(tmp_path / "hf", vocab_size=250, num_attention_heads=8, num_key_value_heads=4)
    mg = roundtrip(hf, tmp_path, "--tp", "4", "--pp", "1", "--params-dtype", "bf16")
    assert_bitwise_equal(hf_tensors(hf), hf_tensors(tmp_path / "back"))
    last_rank = torch.load(mg / "iter_0000001/mp_rank_03/model_optim_rng.pt", weights_only=False)["model"]
    emb = last_rank["embedding.word_embeddings.weight"]  # 252 padded rows / 4 = 63 per rank
    assert emb.shape == (63, 64)
    assert torch.equal(emb[-2], emb[-3]) and torch.equal(emb[-1], emb[-3])  # rows 250, 251 repeat row 249


def test_dtype_fp32_and_back(tiny_hf: Path, tmp_path: Path) -> None:
    mg, back = tmp_path / "mg", tmp_path / "back"
    assert main(["convert", "-i", str(tiny_hf), "-o", str(mg), "--params-dtype", "fp32", "--tp", "2"]) == 0
    rank = torch.load(mg / "iter_0000001/mp_rank_00/model_optim_rng.pt", weights_only=False)
    assert rank["model"]["decoder.layers.0.mlp.linear_fc1.weight"].dtype == torch.float32 and not rank["args"].bf16
    assert main(["convert", "--from", "mg", "-i", str(mg), "-o", str(back), "--params-dtype", "bf16"]) == 0
    assert_bitwise_equal(hf_tensors(tiny_hf), hf_tensors(back))  # bf16 -> fp32 -> bf16 is exact


def test_hf_output_loads_in_transformers(tiny_hf: Path, tmp_path: Path) -> None:
    from transformers import Qwen2ForCausalLM

    roundtrip(tiny_hf, tmp_path, "--tp", "2", "--pp", "2")
    a = Qwen2ForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()
    b = Qwen2ForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    tokens = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        assert torch.equal(a(tokens).logits, b(tokens).logits)


def test_only_stage_writes_one_node_share(tiny_hf: Path, tmp_path: Path) -> None:
    mg = tmp_path / "mg"
    assert main(["convert", "-i", str(tiny_hf), "-o", str(mg), "--tp", "2", "--pp", "2", "--only-stage", "1"]) == 0
    names = sorted(p.parent.name for p in (mg / "iter_0000001").glob("*/model_optim_rng.pt"))
    assert names == ["mp_rank_00_001", "mp_rank_01_001"]
    assert json.loads((mg / MANIFEST).read_text())["complete"] is False
    full = tmp_path / "full"
    assert main(["convert", "-i", str(tiny_hf), "-o", str(full), "--tp", "2", "--pp", "2"]) == 0
    for name in names:
        rel = f"iter_0000001/{name}/model_optim_rng.pt"
        a = torch.load(mg / rel, weights_only=False)["model"]
        b = torch.load(full / rel, weights_only=False)["model"]
        assert all(torch.equal(a[k], b[k]) for k in b) and a.keys() == b.keys()
