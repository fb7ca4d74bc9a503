"""The Python API the trainer uses, the MindSpeed-LLM argv builder, and the torch file format."""

from __future__ import annotations

import argparse
import collections
import io
import zipfile
from pathlib import Path

import torch

from q7x2_runtime.cli import main
from q7x2_runtime.convert import load_mcore_as_hf_state_dict, read_latest_iteration, save_hf_state_dict_as_mcore
from q7x2_runtime.convert.hf_source import dims_of
from q7x2_runtime.convert.mindspeed import mindspeed_convert_argv
from q7x2_runtime.convert.output import verify_manifest
from q7x2_runtime.convert.torch_zip import TorchZipWriter

from test_roundtrip import assert_bitwise_equal, hf_tensors


def test_load_merges_to_hf_names(tiny_hf: Path, tmp_path: Path) -> None:
    mg = tmp_path / "mg"
    assert main(["convert", "-i", str(tiny_hf), "-o", str(mg), "--tp", "2", "--pp", "2", "--num-layer-list", "3,1"]) == 0
    dims, state = load_mcore_as_hf_state_dict(mg)
    assert dims == dims_of(tiny_hf)
    assert_bitwise_equal(hf_tensors(tiny_hf), state)


def test_load_tied_gives_lm_head(tiny_hf_tied: Path, tmp_path: Path) -> None:
    from transformers import Qwen2ForCausalLM

    mg = tmp_path / "mg"
    assert main(["convert", "-i", str(tiny_hf_tied), "-o", str(mg), "--pp", "2"]) == 0
    dims, state = load_mcore_as_hf_state_dict(mg, iteration=1)
    assert not dims.untie_embeddings and state["lm_head.weight"] is state["model.embed_tokens.weight"]
    model = Qwen2ForCausalLM.from_pretrained(tiny_hf_tied)
    model.load_state_dict(state, strict=True)


def test_save_then_load_at_training_iterations(tiny_hf: Path, tmp_path: Path) -> None:
    dims = dims_of(tiny_hf)
    state = {k: v.float() for k, v in hf_tensors(tiny_hf).items()}
    save = tmp_path / "ckpt"
    assert read_latest_iteration(save) is None
    save_hf_state_dict_as_mcore(state, dims, save, tp=2, pp=2, num_layer_list=[1, 3], iteration=10, params_dtype="fp32",
                                extra_args={"seq_length": 32, "consumed_train_samples": 640})
    assert read_latest_iteration(save) == 10
    state2 = {k: v * 2 for k, v in state.items()}
    save_hf_state_dict_as_mcore(state2, dims, save, tp=2, pp=2, num_layer_list=[1, 3], iteration=20, params_dtype="fp32")
    assert read_latest_iteration(save) == 20
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "20"
    assert verify_manifest(save / "iter_0000010") == [] and verify_manifest(save / "iter_0000020") == []
    _, latest = load_mcore_as_hf_state_dict(save)
    assert_bitwise_equal(state2, latest)
    _, first = load_mcore_as_hf_state_dict(save, iteration=10)
    assert_bitwise_equal(state, first)
    rank = torch.load(save / "iter_0000010/mp_rank_01_001/model_optim_rng.pt", weights_only=False)
    assert rank["iteration"] == 10 and rank["args"].seq_length == 32 and rank["args"].consumed_train_samples == 640
    # the same layout converts to HF with the CLI
    assert main(["convert", "--from", "mg", "-i", str(save), "-o", str(tmp_path / "hf"), "--params-dtype", "bf16",
                 "--hf-template", str(tiny_hf)]) == 0
    back = hf_tensors(tmp_path / "hf")
    assert torch.equal(back["model.norm.weight"], state2["model.norm.weight"].bfloat16())


def test_mindspeed_argv_matches_the_official_example() -> None:
    argv = mindspeed_convert_argv("hf", "mg", "/apps/models/Qwen2.5-7B", "/apps/models/Qwen2.5-7B-mcore", 4, 2,
                                  num_layer_list=[11, 17], python="python", mindspeed_llm_dir="/opt/MindSpeed-LLM")
    assert argv == [
        "python", "/opt/MindSpeed-LLM/convert_ckpt.py", "--use-mcore-models", "--model-type", "GPT",
        "--load-model-type", "hf", "--save-model-type", "mg",
        "--target-tensor-parallel-size", "4", "--target-pipeline-parallel-size", "2", "--num-layer-list", "11,17",
        "--add-qkv-bias", "--load-dir", "/apps/models/Qwen2.5-7B", "--save-dir", "/apps/models/Qwen2.5-7B-mcore",
        "--tokenizer-model", "/apps/models/Qwen2.5-7B/tokenizer.json", "--model-type-hf", "llama2", "--params-dtype", "bf16",
    ]


def test_mindspeed_dir_from_env_and_back_to_hf(monkeypatch) -> None:
    monkeypatch.setenv("MINDSPEED_LLM_DIR", "/srv/msllm")
    argv = mindspeed_convert_argv("mg", "hf", "/ckpt", "/apps/models/Qwen2.5-7B", params_dtype=None)
    assert argv[1] == "/srv/msllm/convert_ckpt.py"
    assert argv[argv.index("--target-tensor-parallel-size") + 1] == "1"
    assert "--tokenizer-model" not in argv and "--params-dtype" not in argv


def test_engine_mindspeed_missing_dir(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MINDSPEED_LLM_DIR", str(tmp_path))
    assert main(["convert", "--engine", "mindspeed", "-i", "/a", "-o", "/b"]) == 2
    assert "convert_ckpt.py not found" in capsys.readouterr().err


def test_convert_ckpt_flags_are_accepted(tiny_hf: Path, tmp_path: Path) -> None:
    assert main([
        "convert", "--use-mcore-models", "--model-type", "GPT", "--load-model-type", "hf", "--save-model-type", "mg",
        "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2", "--add-qkv-bias",
        "--load-dir", str(tiny_hf), "--save-dir", str(tmp_path / "mg"), "--tokenizer-model", str(tiny_hf / "tokenizer.json"),
        "--model-type-hf", "llama2", "--params-dtype", "bf16", "--num-layer-list", "2,2",
    ]) == 0


def test_pickle_is_what_torch_save_writes(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(5, 3).bfloat16(), "b": torch.randn(7), "c": torch.randn(4, 2).half(), "d": torch.randn(())}
    w = TorchZipWriter(tmp_path / "model_optim_rng.pt")
    slots = collections.OrderedDict((k, w.slot(tuple(v.shape), v.dtype)) for k, v in tensors.items())
    obj = {"args": argparse.Namespace(x=1, params_dtype=torch.bfloat16), "iteration": 1, "model": slots}
    w.begin(obj)
    for k, v in tensors.items():
        w.write_tensor(slots[k], v)
    w.finish()
    ref = io.BytesIO()
    torch.save({**obj, "model": collections.OrderedDict(tensors)}, ref)
    ours = zipfile.ZipFile(tmp_path / "model_optim_rng.pt")
    assert ours.testzip() is None
    assert ours.read("model_optim_rng/data.pkl") == zipfile.ZipFile(ref).read("archive/data.pkl")
    for mmap in (False, True):
        loaded = torch.load(tmp_path / "model_optim_rng.pt", weights_only=False, mmap=mmap)
        assert all(torch.equal(loaded["model"][k], v) and loaded["model"][k].dtype == v.dtype for k, v in tensors.items())
    for info in ours.infolist():
        assert info.header_offset >= 0 and info.compress_type == zipfile.ZIP_STORED


def test_reads_checkpoints_written_by_torch_save_with_foreign_classes(tiny_hf: Path, tmp_path: Path) -> None:
    """Megatron writes rank files with torch.save, and its args may hold classes from packages
    not installed where we convert back (megatron, mindspeed)."""
    import sys
    import types

    mg = tmp_path / "mg"
    assert main(["convert", "-i", str(tiny_hf), "-o", str(mg), "--tp", "2", "--pp", "2"]) == 0
    fake = types.ModuleType("fake_megatron_enums")

    class AttnMaskType:
        def __init__(self, value: int) -> None:
            self.value = value

    AttnMaskType.__module__, AttnMaskType.__qualname__ = "fake_megatron_enums", "AttnMaskType"
    fake.AttnMaskType = AttnMaskType
    sys.modules["fake_megatron_enums"] = fake
    try:
        for f in (mg / "iter_0000001").glob("*/model_optim_rng.pt"):
            state = torch.load(f, weights_only=False)
            state["args"].attn_mask_type = AttnMaskType(1)
            f.unlink()
            torch.save(state, f)
    finally:
        del sys.modules["fake_megatron_enums"]
    (mg / "q7x2-checksums.json").unlink()  # as Megatron writes them: no manifest of ours
    dims, state = load_mcore_as_hf_state_dict(mg)
    assert_bitwise_equal(hf_tensors(tiny_hf), state)
    assert main(["convert", "--from", "mg", "-i", str(mg), "-o", str(tmp_path / "back")]) == 0
    assert_bitwise_equal(hf_tensors(tiny_hf), hf_tensors(tmp_path / "back"))
