"""Bugs found by loading our files with MindSpeed-LLM 2.0.0's own code, each pinned by a test."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from q7x2_runtime.cli import main
from q7x2_runtime.convert.mindspeed import mindspeed_convert_argv
from q7x2_runtime.model_dims import dims_from_hf_config


def test_converted_checkpoints_record_a_sequence_length(tiny_hf: Path, tmp_path: Path) -> None:
    # MindSpeed-LLM's mcore -> hf reads seq_length from the checkpoint and aborts on None.
    assert main(["convert", "-i", str(tiny_hf), "-o", str(tmp_path / "mg"), "--tp", "2"]) == 0
    args = torch.load(tmp_path / "mg" / "iter_0000001" / "mp_rank_01" / "model_optim_rng.pt", weights_only=False)["args"]
    assert args.seq_length == dims_from_hf_config(tiny_hf).max_position_embeddings


def test_mg_to_hf_keeps_a_bf16_params_dtype() -> None:
    # convert_ckpt.py's loader defaults to fp16, which loses a bf16 checkpoint's small values.
    argv = mindspeed_convert_argv("mg", "hf", "/ckpt", "/apps/models/Qwen2.5-7B", params_dtype="bf16")
    assert argv[argv.index("--params-dtype") + 1] == "bf16"


# A stand-in convert_ckpt.py whose saver "dies" after some files, yet which exits 0 as the real one does.
FAKE = """
import argparse, os, sys, torch
p = argparse.ArgumentParser()
p.add_argument("--save-dir"); p.add_argument("--save-model-type")
p.add_argument("--target-tensor-parallel-size", type=int, default=1)
args, _ = p.parse_known_args()
write_ranks = int(os.environ["FAKE_RANKS"])
if args.save_model_type == "mg":
    os.makedirs(args.save_dir, exist_ok=True)
    for t in range(write_ranks):
        d = os.path.join(args.save_dir, "iter_0000001", f"mp_rank_{t:02d}")
        os.makedirs(d, exist_ok=True)
        torch.save({"model": {}}, os.path.join(d, "model_optim_rng.pt"))
    if os.environ.get("FAKE_TRACKER") == "1":
        open(os.path.join(args.save_dir, "latest_checkpointed_iteration.txt"), "w").write("1")
else:
    out = os.path.join(args.save_dir, "mg2hf")
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "config.json"), "w").write("{}")
sys.exit(0)
"""


@pytest.fixture
def fake_mindspeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "MindSpeed-LLM"
    root.mkdir()
    (root / "convert_ckpt.py").write_text(textwrap.dedent(FAKE))
    monkeypatch.setenv("MINDSPEED_LLM_DIR", str(root))
    return root


def _convert(tiny_hf: Path, out: Path) -> list[str]:
    return ["convert", "--engine", "mindspeed", "-i", str(tiny_hf), "-o", str(out), "--tp", "2"]


def test_exit_0_with_a_rank_file_missing_is_a_failure(tiny_hf: Path, tmp_path: Path, fake_mindspeed: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_RANKS", "1")
    monkeypatch.setenv("FAKE_TRACKER", "1")
    assert main(_convert(tiny_hf, tmp_path / "mg")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "exited 0 but its output is incomplete" in err and "iter_0000001/mp_rank_01/model_optim_rng.pt" in err


def test_exit_0_without_the_tracker_is_a_failure(tiny_hf: Path, tmp_path: Path, fake_mindspeed: Path,
                                                 monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_RANKS", "2")
    monkeypatch.setenv("FAKE_TRACKER", "0")
    assert main(_convert(tiny_hf, tmp_path / "mg")) == 2
    assert "latest_checkpointed_iteration.txt" in capsys.readouterr().err


def test_a_complete_output_passes(tiny_hf: Path, tmp_path: Path, fake_mindspeed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_RANKS", "2")
    monkeypatch.setenv("FAKE_TRACKER", "1")
    assert main(_convert(tiny_hf, tmp_path / "mg")) == 0


def test_mg_to_hf_without_weights_is_a_failure(tmp_path: Path, fake_mindspeed: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("FAKE_RANKS", "0")
    assert main(["convert", "--engine", "mindspeed", "--from", "mg", "-i", str(tmp_path / "ckpt"), "-o", str(tmp_path / "hf")]) == 2
    assert "mg2hf/model.safetensors" in capsys.readouterr().err
