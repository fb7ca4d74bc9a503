"""Crash drill: SIGKILL `q7x2-runtime preprocess` (and its workers) at seeded random points.

After every kill no dataset may look complete (an .idx) unless it is, a rerun must succeed and
leave no temp files next to the output, and its .bin/.idx must equal a clean run's byte for
byte. The manifest must too, except the fields that record the run itself (when, how long,
whether the engine decision came from the cache).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from q7x2_runtime.indexed_dataset import IndexedDataset
from q7x2_runtime.sample.make import make_sample
from tests.runtime_fs import debris_in, kill_when, run_cli, start_cli

SEED = 18
KILLS = 6
RUN_RECORD = ("created", "seconds", "tokenizer.engine_decision")


def outputs(parent: Path) -> dict[str, object]:
    """Everything the run published, with the manifest's run-record fields left out."""
    found: dict[str, object] = {}
    for p in sorted(parent.iterdir()):
        if p.name.endswith("_manifest.json"):
            m = json.loads(p.read_text())
            for field in RUN_RECORD:
                *path, last = field.split(".")
                d = m
                for k in path:
                    d = d[k]
                d.pop(last)
            found[p.name] = m
        else:
            found[p.name] = p.read_bytes()
    return found


def remove_outputs(parent: Path) -> None:
    for p in parent.iterdir():
        p.unlink()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "sample"
    make_sample(root)
    return root


@pytest.mark.slow
def test_killed_preprocess_leaves_nothing_complete_and_a_rerun_equals_a_clean_run(sample: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    out = tmp_path / "out"
    out.mkdir()
    prefix = out / "alpaca"
    env = {**os.environ, "Q7X2_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    argv = ["preprocess", "--input", str(sample / "data" / "alpaca.parquet"), "--tokenizer-name-or-path", str(sample / "model"),
            "--output-prefix", str(prefix), "--workers", "2", "--append-eod", "--batch-rows", "16"]  # fmt: skip

    started = time.monotonic()
    clean = run_cli(*argv, env=env, timeout=900)
    duration = time.monotonic() - started
    assert clean.returncode == 0, clean.stderr
    expected = outputs(out)
    assert {"alpaca_text_document.bin", "alpaca_text_document.idx", "alpaca_manifest.json"} == set(expected)
    remove_outputs(out)

    killed = 0
    for _ in range(KILLS):
        after_debris = rng.random() < 0.6
        delay = rng.uniform(0, 0.2) if after_debris else rng.uniform(0, duration)
        if not kill_when(start_cli(*argv, env=env), out, delay, after_debris, timeout=900):
            # It finished first: start the next from an empty directory too, or its kill would
            # find this run's complete dataset beside its own fresh temporaries.
            remove_outputs(out)
            continue
        killed += 1
        if (out / "alpaca_text_document.idx").exists():  # killed after the last rename: complete
            IndexedDataset(prefix.with_name("alpaca_text_document"))
            assert outputs(out) == expected
        rerun = run_cli(*argv, env=env, timeout=900)
        assert rerun.returncode == 0, rerun.stderr
        assert debris_in(out) == [], "a rerun must remove what the killed run left"
        # Nor anything in TMPDIR (workers get their work through pipes) or the engine cache.
        assert sorted(p.name for p in tmp_path.iterdir()) in (["out"], ["cache", "out"]), list(tmp_path.iterdir())
        assert [p.name for p in (tmp_path / "cache").rglob(".*")] == [], "a killed run's cache temporaries must be gone"
        assert outputs(out) == expected, "a rerun must equal a clean run"
        remove_outputs(out)
    assert killed >= 2
