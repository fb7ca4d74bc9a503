"""--skip-existing: re-running a job's conversion is free when the output already matches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from q7x2_runtime.cli import main


def convert(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["convert", "--load-model-type", "hf", "--save-model-type", "mg", *argv])
    return rc, capsys.readouterr().err


def test_same_settings_skip_other_settings_refuse(tiny_hf: Path, tmp_path: Path, capsys) -> None:
    hf = Path(shutil.copytree(tiny_hf, tmp_path / "hf"))
    out = tmp_path / "mcore"
    common = ["--load-dir", str(hf), "--save-dir", str(out), "--target-pipeline-parallel-size", "2"]
    rc, _ = convert(capsys, *common, "--skip-existing")
    assert rc == 0
    rank_file = next(out.rglob("model_optim_rng.pt"))
    written = rank_file.stat().st_mtime_ns

    rc, err = convert(capsys, *common, "--skip-existing")
    assert rc == 0 and "skipped" in err
    assert rank_file.stat().st_mtime_ns == written  # nothing rewritten

    rc, err = convert(capsys, *common, "--skip-existing", "--params-dtype", "fp32")
    assert rc == 2 and "already exists; pass --force" in err

    rc, err = convert(capsys, *common)  # without the flag an existing output is still refused
    assert rc == 2 and "already exists" in err
