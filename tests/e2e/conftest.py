"""The cpu image for end-to-end runs: built once per session (offline, cached wheelhouse)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def build_cpu_image(ref: str, push: bool) -> None:
    from q7x2_deploy.image.base_image import ensure_base_image

    base = ensure_base_image(log=lambda _m: None)
    argv = [sys.executable, "-m", "q7x2_deploy.cli", "build-image", "--flavor", "cpu", "--tag", ref,
            "--base-image", base, *(["--push"] if push else [])]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"build-image failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


@pytest.fixture(scope="session")
def e2e_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")
