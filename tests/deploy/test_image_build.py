"""build-image: the offline wheelhouse is cached, the context has the layout the Dockerfile
templates expect, and a real build in the local engine succeeds and is fast the second time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from q7x2_deploy.image import wheelhouse
from q7x2_deploy.image.context import assemble_context
from q7x2_deploy.image.wheelhouse import WheelhouseSpec, cache_key, prepare_wheelhouse


def test_cache_key_follows_what_decides_the_wheels() -> None:
    a = WheelhouseSpec("cpu", ["torch==2.13.0"])
    assert cache_key(a, b"x") == cache_key(WheelhouseSpec("cpu", ["torch==2.13.0"]), b"x")
    assert cache_key(a, b"x") != cache_key(a, b"y")  # pyproject (dependencies) changed
    assert cache_key(a, b"x") != cache_key(WheelhouseSpec("cpu", ["torch==2.12.0"]), b"x")
    assert cache_key(a, b"x") != cache_key(WheelhouseSpec("cpu", ["torch==2.13.0"], platform="manylinux2014_aarch64"), b"x")


def test_second_prepare_only_rebuilds_the_project_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = WheelhouseSpec("cpu", [], extras="")
    first = prepare_wheelhouse(spec, tmp_path / "wh")
    wheels = sorted(p.name for p in first.glob("*.whl"))
    assert any(w.startswith("q7x2_deploy-") for w in wheels) and any(w.startswith("pydantic-") for w in wheels)
    calls: list[list[str]] = []
    real = wheelhouse._pip
    monkeypatch.setattr(wheelhouse, "_pip", lambda args, *a, **k: (calls.append(args), real(args, *a, **k)))
    again = prepare_wheelhouse(spec, tmp_path / "wh")
    assert again == first and len(calls) == 1 and "--no-deps" in calls[0]
    assert sorted(p.name for p in again.glob("*.whl")) == wheels


def test_context_layout(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    wh.mkdir()
    (wh / "demo-1.0-py3-none-any.whl").write_bytes(b"PK")
    (wh / "q7x2_deploy-0.1.0-py3-none-any.whl").write_bytes(b"PK")
    ctx = assemble_context(tmp_path / "ctx", flavor="cpu", base_image="base:1", wheelhouse=wh)
    froms = [ln for ln in (ctx / "Dockerfile").read_text().splitlines() if ln.startswith("FROM ")]
    assert froms == ["FROM base:1 AS deps", "FROM base:1"]  # a stage for the deps, then the image
    # Dependencies and the project's wheel apart, so the dependency layer stays cached.
    assert sorted(p.name for p in (ctx / "wheels" / "deps").iterdir()) == ["demo-1.0-py3-none-any.whl"]
    assert sorted(p.name for p in (ctx / "wheels" / "project").iterdir()) == ["q7x2_deploy-0.1.0-py3-none-any.whl"]
    assert (ctx / "entrypoint.sh").stat().st_mode & 0o111


@pytest.mark.slow
def test_build_twice_second_is_fast(tmp_path: Path) -> None:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine answers")
    from q7x2_deploy.image.base_image import ensure_base_image

    base = ensure_base_image(log=lambda _m: None)
    ref = "q7x2-test/qwen25-cpu:build"
    argv = [sys.executable, "-m", "q7x2_deploy.cli", "build-image", "--flavor", "cpu", "--tag", ref,
            "--base-image", base]
    times = []
    for _ in range(2):
        t0 = time.monotonic()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
        times.append(time.monotonic() - t0)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # Offline inside: the runtime and torch came from the wheelhouse.
    r = subprocess.run(["docker", "run", "--rm", "--network", "none", ref, "python", "-c",
                        "import torch, q7x2_runtime; print(torch.__version__)"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().startswith("2.13.0"), r.stderr
    # The wheelhouse never becomes a layer of the image (it would stay there, ~300 MB, after `rm`).
    history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", ref],
                             capture_output=True, text=True, check=True).stdout
    assert "/tmp/wheels" not in history and " in /opt/q7x2" in history, history  # the venv, copied whole
    print(f"\nbuild-image: {times[0]:.0f}s, then {times[1]:.0f}s")
