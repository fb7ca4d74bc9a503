"""The air-gapped wheelhouse: its manifest and checks (fast), and for real (slow, downloads):
filled for aarch64 / Python 3.10 from this machine's index, it resolves offline for that target,
and a second run takes it from the cache; a cpu wheelhouse carried in builds the image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from q7x2_deploy.errors import DeployError
from q7x2_deploy.image.ascend_requirements import read_requirements, source_requirements
from q7x2_deploy.image.target_wheelhouse import MANIFEST, Manifest, check_against_manifest, sha256_file, wheel_entry

AARCH64 = ["--platform", "manylinux2014_aarch64", "--python-version", "3.10"]


def _cli(*args: str, cwd: Path, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_wheel_entries_and_manifest_check(tmp_path: Path) -> None:
    w = tmp_path / "torch_npu-2.1.0.post12-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    w.write_bytes(b"PK wheel bytes")
    e = wheel_entry(w)
    assert (e.name, e.version, e.size) == ("torch-npu", "2.1.0.post12", 14) and e.sha256 == sha256_file(w)
    (tmp_path / MANIFEST).write_text(Manifest("ascend", "manylinux2014_aarch64", "3.10", ["torch_npu"], [e]).to_json())
    assert check_against_manifest(tmp_path).wheels == [e]
    w.write_bytes(b"PK wheel bytez")  # same size, other bytes: a damaged copy
    with pytest.raises(DeployError, match="sha256 differs"):
        check_against_manifest(tmp_path)
    w.unlink()
    with pytest.raises(DeployError, match="listed in manifest.json but missing"):
        check_against_manifest(tmp_path)
    with pytest.raises(DeployError, match="no manifest"):
        check_against_manifest(tmp_path / "elsewhere")


def test_vendored_requirements_files_decide(tmp_path: Path) -> None:
    builtin = source_requirements(None)
    assert "transformers==4.43.2" in builtin and "highspy==1.9.0" in builtin and builtin[-2:] == ["setuptools", "wheel"]
    for name in ("MindSpeed", "MindSpeed-LLM"):
        (tmp_path / name).mkdir()
    (tmp_path / "MindSpeed" / "requirements.txt").write_text("# build\nnumpy\n\n-i ignored\nsix  # why\n")
    (tmp_path / "MindSpeed-LLM" / "requirements.txt").write_text("transformers==4.43.2\n")
    assert read_requirements(tmp_path / "MindSpeed" / "requirements.txt") == ["numpy", "six"]
    assert source_requirements(tmp_path) == ["numpy", "six", "transformers==4.43.2", "setuptools", "wheel"]


def test_wheelhouse_only_needs_the_target(tmp_path: Path) -> None:
    r = _cli("build-image", "--flavor", "ascend", "--wheelhouse-only", str(tmp_path / "wh"), cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "--platform" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    r = _cli("build-image", "--flavor", "ascend", "--wheelhouse-only", str(tmp_path / "full"), *AARCH64,
             cwd=tmp_path, timeout=300)
    assert r.returncode != 0 and "not empty and holds no manifest.json" in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.long  # 364 MB from the index and ~11 min on a cold cache (45 s warm)
def test_ascend_aarch64_wheelhouse_for_real(tmp_path: Path) -> None:
    """Downloads about 900 MB the first time (kept in ~/.cache/q7x2/wheelhouse for later runs)."""
    dest = tmp_path / "wh"
    r = _cli("build-image", "--flavor", "ascend", "--wheelhouse-only", str(dest), *AARCH64, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    manifest = json.loads((dest / MANIFEST).read_text())
    wheels = {w["name"]: w for w in manifest["wheels"]}
    assert wheels["torch"]["version"] == "2.1.0" and wheels["torch-npu"]["version"] == "2.1.0.post12"
    assert wheels["transformers"]["version"] == "4.43.2" and "q7x2-deploy" in wheels and "mindspeed" not in wheels
    assert {"ray", "highspy", "tensordict", "bitsandbytes-npu-beta", "setuptools"} <= set(wheels)
    for w in manifest["wheels"]:
        assert sha256_file(dest / w["file"]) == w["sha256"]
        assert w["file"].endswith(("-none-any.whl", "aarch64.whl")), w["file"]  # nothing for this machine
    # Published as sdists only, pure Python: built here once.
    assert {"transformers_stream_generator", "word2number"} <= set(manifest["built_from_sdists"])
    assert any(m.startswith("apex") for m in manifest["missing"]) and "not in the wheelhouse: apex" in r.stdout
    # Independently of the command's own check: resolves from DIR alone for the target.
    project = next(w["file"] for w in manifest["wheels"] if w["name"] == "q7x2-deploy")
    reqs = [q for q in manifest["requirements"] if not q.startswith("q7x2_deploy")] + [f"{dest / project}[runtime]"]
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--find-links", str(dest),
                          "--dry-run", "--ignore-installed", "--only-binary=:all:", *AARCH64, "--target",
                          str(tmp_path / "t"), *reqs], capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "Would install" in dry.stdout and "torch-2.1.0" in dry.stdout and "torch_npu-2.1.0.post12" in dry.stdout

    again = _cli("build-image", "--flavor", "ascend", "--wheelhouse-only", str(dest), *AARCH64, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "is up to date" in again.stdout and "Saved" not in again.stdout, again.stdout[-3000:]
    assert json.loads((dest / MANIFEST).read_text())["wheels"] == manifest["wheels"]
    print("\n" + r.stdout.strip().splitlines()[-3] + "\n" + again.stdout.strip().splitlines()[-3])


@pytest.mark.slow
def test_carried_cpu_wheelhouse_builds_the_image_offline(tmp_path: Path) -> None:
    """The second step for real, on the flavor this machine can build: a wheelhouse with a
    manifest is used as it is (checked, nothing fetched), a damaged one is refused."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine answers")
    from q7x2_deploy.image.base_image import ensure_base_image
    from tests.isolation import tag

    dest = tmp_path / "wh"
    r = _cli("build-image", "--flavor", "cpu", "--wheelhouse-only", str(dest), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {w["name"] for w in json.loads((dest / MANIFEST).read_text())["wheels"]} >= {"torch", "q7x2-deploy"}
    ref = tag("q7x2-test/qwen25-cpu:carried")
    base = ensure_base_image(log=lambda _m: None)
    build = ["build-image", "--flavor", "cpu", "--tag", ref, "--base-image", base, "--wheelhouse", str(dest)]
    r = _cli(*build, cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all as its manifest lists them" in r.stdout and "Saved" not in r.stdout and "Collecting" not in r.stdout
    doctor = subprocess.run(["docker", "run", "--rm", "--network", "none", ref, "q7x2-runtime", "doctor"],
                            capture_output=True, text=True, timeout=300)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    victim = next(dest.glob("tokenizers-*.whl"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    # A new file, not a write through: the wheelhouse's wheels are hard links into the shared
    # cache, and damaging the cache's copy broke every later image build on the machine.
    victim.unlink()
    victim.write_bytes(bytes(data))
    r = _cli(*build, cwd=tmp_path, timeout=600)
    assert r.returncode != 0 and f"{victim}: sha256 differs from manifest.json" in r.stderr, r.stderr[-2000:]


def test_ascend_context_records_vendored_sources(tmp_path: Path) -> None:
    """The ascend build context: pins.json from the stack, and beside each vendored source the
    tag and commit doctor compares with the pins (a copy without git metadata records none)."""
    from q7x2_deploy.image.context import assemble_context
    from q7x2_runtime.doctor.pins import Pins

    vendor = tmp_path / "vendor"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"]
    for name, tag in (("MindSpeed", "2.0.0_core_r0.8.0"), ("MindSpeed-LLM", "v2.0.0")):
        (vendor / name).mkdir(parents=True)
        (vendor / name / "requirements.txt").write_text("numpy\n")
        subprocess.run([*git, "init", "-q", str(vendor / name)], check=True)
        subprocess.run([*git, "-C", str(vendor / name), "add", "."], check=True)
        subprocess.run([*git, "-C", str(vendor / name), "commit", "-qm", "x"], check=True)
        subprocess.run([*git, "-C", str(vendor / name), "tag", tag], check=True)
    (vendor / "Megatron-LM" / "megatron" / "core").mkdir(parents=True)  # a plain copy, no .git
    wh = tmp_path / "wh"
    wh.mkdir()
    (wh / "q7x2_deploy-0.1.0-py3-none-any.whl").write_bytes(b"PK")
    ctx = assemble_context(tmp_path / "ctx", flavor="ascend", base_image="cann:1", wheelhouse=wh, vendor=vendor,
                           python_version="3.10")
    llm = json.loads((ctx / "vendor" / "MindSpeed-LLM" / ".q7x2-source.json").read_text())
    assert llm["tag"] == "v2.0.0" and llm["branch"] == "main" and len(llm["commit"]) == 40
    empty = {"tag": None, "branch": None, "commit": None}
    assert json.loads((ctx / "vendor" / "Megatron-LM" / ".q7x2-source.json").read_text()) == empty
    assert not (ctx / "vendor" / "MindSpeed" / ".git").exists()
    pins = {p.name: p for p in Pins.from_json((ctx / "pins.json").read_text()).components}
    assert pins["Python"].want == "3.10" and pins["torch_npu"].want == "2.1.0.post12"
    dockerfile = (ctx / "Dockerfile").read_text()
    assert "COPY pins.json /usr/local/share/q7x2/pins.json" in dockerfile and "doctor --record" in dockerfile
