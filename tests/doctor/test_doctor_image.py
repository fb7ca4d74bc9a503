"""doctor for real, in the cpu image built by build-image: the build recorded its pins, a
container of it matches them, and one whose pins say otherwise fails with one line each."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from q7x2_deploy.render import image_pins
from tests.e2e.conftest import build_cpu_image
from tests.isolation import tag

pytestmark = pytest.mark.slow
REF = tag("q7x2-test/qwen25-cpu:doctor")


@pytest.fixture(scope="module")
def cpu_image() -> str:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine answers")
    build_cpu_image(REF, push=False)
    return REF


def _doctor(ref: str, *args: str, volume: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", *(["-v", volume] if volume else []),
                           ref, "q7x2-runtime", "doctor", *args], capture_output=True, text=True, timeout=300)


def test_cpu_image_matches_its_pins(cpu_image: str) -> None:
    r = _doctor(cpu_image)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "torch" in r.stdout and "2.13.0" in r.stdout and f"all {len(image_pins('cpu').components)} components match" in r.stdout, r.stdout
    found = json.loads(_doctor(cpu_image, "--json").stdout)
    names = {f["name"]: f for f in found["findings"]}
    # Recorded at build time from what pip resolved: a fixed version now, not "any".
    assert names["transformers"]["want"] and names["transformers"]["want"] == names["transformers"]["have"]
    assert names["Python"]["want"].startswith("3.11")


def test_cpu_image_reports_each_mismatch(cpu_image: str, tmp_path: Path) -> None:
    pins = json.loads(subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "cat",
                                      cpu_image, "/usr/local/share/q7x2/pins.json"],
                                     capture_output=True, text=True, check=True).stdout)
    for c in pins["components"]:
        if c["name"] == "torch":
            c["want"] = "2.1.0"
        if c["name"] == "transformers":
            c["want"] = "4.43.2"
    (tmp_path / "pins.json").write_text(json.dumps(pins))
    r = _doctor(cpu_image, volume=f"{tmp_path / 'pins.json'}:/usr/local/share/q7x2/pins.json:ro")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("torch: 2.13.0") and lines[0].endswith("pinned 2.1.0"), lines
    assert lines[1].startswith("transformers: ") and lines[1].endswith("pinned 4.43.2"), lines


def test_cpu_image_holds_its_libraries_unicode_verdict(cpu_image: str) -> None:
    """The build compared HF's and tiktoken's Unicode classes once, so no container's first
    preprocess pays for it: the record is there, for exactly the installed versions."""
    script = ("from q7x2_runtime.preprocess import unicode_classes as u; "
              "print(u._verdict_path(u.installation_root()).read_text()); "
              "print(u.cached_verdict(__import__('pathlib').Path('/nonexistent')))")
    r = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", cpu_image, "-c", script],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    record, verdict = r.stdout.strip().splitlines()
    assert json.loads(record) == {"disagreement": None} and verdict == "(True, None)", r.stdout


def test_cpu_image_holds_transformers_import_tables(cpu_image: str) -> None:
    """The build kept transformers' lazy-import tables, so a new container's first import of
    AutoTokenizer (as preprocess's confirming process does it) reads no model file to build
    them: about 0.6 CPU-s of that process."""
    script = "\n".join([
        "from q7x2_runtime.preprocess import import_structure as i",
        "i.without_torch()",
        "with i.for_this_process():",
        "    from transformers import AutoTokenizer",
        "import transformers.utils.import_utils as u",
        "print(len(list((i.installation_root() / 'transformers-imports').glob('*.json'))),",
        "      u.create_import_structure_from_path.cache_info().misses, len(u.define_import_structure.keeper.asked))",
    ])  # fmt: skip
    r = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", "-e", "HOME=/tmp",
                        cpu_image, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recorded, scanned, asked = map(int, r.stdout.split())
    assert recorded >= 2 and asked >= 2 and scanned == 0, r.stdout
