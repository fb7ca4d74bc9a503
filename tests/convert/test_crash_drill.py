"""Crash drill: SIGKILL `q7x2-runtime convert` at seeded random points, both directions.

After every kill nothing under the output's name may look complete unless it is (a kill after
the final rename), a rerun must succeed and leave no temporaries behind, and its output must
equal a clean run's byte for byte.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from pathlib import Path

import pytest

from q7x2_runtime.convert.output import manifest_problem
from q7x2_runtime.sample.make import make_sample
from tests.runtime_fs import debris_in, kill_when, run_cli, start_cli

SEED = 18
KILLS = 5  # per direction; each kill costs a run of the CLI (a few seconds, mostly imports)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "sample"
    make_sample(root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["hf", "mg"])
def test_killed_convert_leaves_nothing_complete_and_a_rerun_equals_a_clean_run(direction: str, sample: Path, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-{direction}")
    src = sample / "model"
    if direction == "mg":
        src = tmp_path / "mg-src"
        assert run_cli("convert", "-i", str(sample / "model"), "-o", str(src), "--tp", "2", "--pp", "2", timeout=900).returncode == 0
    out = tmp_path / "out" / "ckpt"
    argv = ["convert", "--from", direction, "-i", str(src), "-o", str(out), "--force"]
    if direction == "hf":
        argv += ["--tp", "2", "--pp", "2"]

    started = time.monotonic()
    clean = run_cli(*argv, timeout=900)
    duration = time.monotonic() - started
    assert clean.returncode == 0, clean.stderr
    expected = tree_digest(out)
    shutil.rmtree(out)

    killed = 0
    for _ in range(KILLS):
        after_debris = rng.random() < 0.6  # most kills while writing, some during start-up
        delay = rng.uniform(0, 0.3) if after_debris else rng.uniform(0, duration)
        if not kill_when(start_cli(*argv), out.parent, delay, after_debris, timeout=900):
            continue
        killed += 1
        # Nothing incomplete under the final name: either nothing, or the finished output.
        if out.exists():
            assert manifest_problem(out) is None and tree_digest(out) == expected
        rerun = run_cli(*argv, timeout=900)
        assert rerun.returncode == 0, rerun.stderr
        assert debris_in(out.parent) == [], "a rerun must remove what the killed run left"
        assert tree_digest(out) == expected, "a rerun must equal a clean run byte for byte"
        shutil.rmtree(out)
    assert killed >= 2, "the seeded kill points should mostly land before the run finishes"
