"""Bad input ends in one clear line on stderr and a non-zero exit, and leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from q7x2_runtime.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["convert", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    return rc, "\n".join(lines)


@pytest.fixture
def hf(tiny_hf: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_hf, tmp_path / "hf"))


def shard_files(hf: Path) -> list[Path]:
    return sorted(hf.glob("model-*.safetensors"))


def assert_nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_shard(hf: Path, tmp_path: Path, capsys) -> None:
    shard_files(hf)[2].unlink()
    rc, err = run(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"))
    assert rc != 0 and "shard listed in the index is missing" in err and err.count("\n") == 0
    assert_nothing_written(tmp_path, tmp_path / "mg")


def test_corrupt_shard(hf: Path, tmp_path: Path, capsys) -> None:
    shard = shard_files(hf)[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    rc, err = run(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"))
    assert rc == 2 and "truncated: its tensors need" in err and str(shard) in err
    assert_nothing_written(tmp_path, tmp_path / "mg")


def test_config_shape_mismatch(hf: Path, tmp_path: Path, capsys) -> None:
    cfg = json.loads((hf / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (hf / "config.json").write_text(json.dumps(cfg))
    rc, err = run(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"))
    assert rc != 0 and "has shape" in err and "config.json implies" in err


def test_config_more_layers_than_checkpoint(hf: Path, tmp_path: Path, capsys) -> None:
    cfg = json.loads((hf / "config.json").read_text())
    cfg["num_hidden_layers"] = 6
    (hf / "config.json").write_text(json.dumps(cfg))
    rc, err = run(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"))
    assert rc != 0 and "checkpoint lacks model.layers.4." in err


def test_tp_not_dividing_kv_groups(hf: Path, tmp_path: Path, capsys) -> None:
    rc, err = run(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"), "--tp", "4")
    assert rc != 0 and "tp=4 does not divide the model's 2 key/value groups" in err


def test_bad_num_layer_list(hf: Path, tmp_path: Path, capsys) -> None:
    rc, err = run(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"), "--pp", "2", "--num-layer-list", "1,2")
    assert rc != 0 and "sums to 3 but the model has 4 layers" in err


def test_output_exists_needs_force(hf: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mg"
    out.mkdir()
    (out / "keep").write_text("x")
    rc, err = run(capsys, "-i", str(hf), "-o", str(out))
    assert rc != 0 and "already exists; pass --force" in err and (out / "keep").exists()
    rc, _ = run(capsys, "-i", str(hf), "-o", str(out), "--force")
    assert rc == 0 and not (out / "keep").exists() and (out / "iter_0000001").is_dir()


def test_disk_full_while_writing(hf: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    real_write, budget = os.write, [20_000]

    def write(fd: int, data) -> int:
        budget[0] -= len(data)
        if budget[0] < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    rc, err = run(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"), "--tp", "2")
    assert rc != 0 and "disk full while writing" in err
    assert_nothing_written(tmp_path, tmp_path / "mg")


def test_not_enough_space_up_front(hf: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6, 1000))
    rc, err = run(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"))
    assert rc != 0 and "not enough disk space" in err
    assert_nothing_written(tmp_path, tmp_path / "mg")


def test_interrupted_run_leaves_nothing_complete(hf: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from q7x2_runtime.convert import to_mcore

    real, calls = to_mcore.assemble_parts, [0]

    def flaky(*a, **k):
        calls[0] += 1
        if calls[0] == 20:  # part-way through the first stage's files
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(to_mcore, "assemble_parts", flaky)
    capsys.readouterr()
    assert main(["convert", "-i", str(hf), "-o", str(tmp_path / "mg"), "--tp", "2"]) == 130
    assert_nothing_written(tmp_path, tmp_path / "mg")


def test_incomplete_mcore_checkpoint(hf: Path, tmp_path: Path, capsys) -> None:
    assert main(["convert", "-i", str(hf), "-o", str(tmp_path / "mg"), "--tp", "2", "--pp", "2"]) == 0
    shutil.rmtree(tmp_path / "mg" / "iter_0000001" / "mp_rank_01_001")
    rc, err = run(capsys, "--from", "mg", "-i", str(tmp_path / "mg"), "-o", str(tmp_path / "back"))
    assert rc != 0 and "incomplete checkpoint, missing mp_rank_01_001" in err


def test_corrupt_rank_file(hf: Path, tmp_path: Path, capsys) -> None:
    assert main(["convert", "-i", str(hf), "-o", str(tmp_path / "mg")]) == 0
    f = tmp_path / "mg" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    f.write_bytes(f.read_bytes()[:1000])
    rc, err = run(capsys, "--from", "mg", "-i", str(tmp_path / "mg"), "-o", str(tmp_path / "back"))
    assert rc == 2 and str(f) in err and "bytes but" in err and "recorded" in err  # the manifest explains it
    (tmp_path / "mg" / "q7x2-checksums.json").unlink()  # as MindSpeed writes them: no manifest
    rc, err = run(capsys, "--from", "mg", "-i", str(tmp_path / "mg"), "-o", str(tmp_path / "back"))
    assert rc == 2 and str(f) in err and "truncated or not a torch.save file" in err


def test_template_of_other_model_size(hf: Path, tmp_path: Path, capsys) -> None:
    assert main(["convert", "-i", str(hf), "-o", str(tmp_path / "mg")]) == 0
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((hf / "config.json").read_text())
    cfg["num_hidden_layers"] = 8
    (other / "config.json").write_text(json.dumps(cfg))
    rc, err = run(capsys, "--from", "mg", "-i", str(tmp_path / "mg"), "-o", str(tmp_path / "back"), "--hf-template", str(other))
    assert rc != 0 and "template config.json has num_layers=8" in err


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "q7x2_runtime.cli", "convert", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "mg")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "config.json: no such file" in proc.stderr
