"""Progress of conversions and preprocessing without a terminal (inside a container): a few
throttled lines that reach `up`'s stream, never one per tensor or per batch."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from q7x2_runtime.cli import main
from q7x2_runtime.preprocess.progress import ProgressReporter
from q7x2_runtime.progress import ByteProgress, LineThrottle, progress_interval


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _plain() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


def test_the_throttle_lets_one_line_through_per_interval() -> None:
    clock = Clock()
    th = LineThrottle(10, clock)
    seen = []
    for step in range(100):  # 0.5 s apart: 50 s in all
        clock.t = step * 0.5
        seen.append(th.ready())
    assert [i * 0.5 for i, ok in enumerate(seen) if ok] == [0.0, 10.0, 20.0, 30.0, 40.0]


def test_byte_progress_prints_rate_limited_lines(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    p = ByteProgress("convert hf -> mcore", 1000 * 2**20, console=_plain(), interval=10, clock=clock)
    for i in range(1000):  # 1 MiB every 0.1 s: 100 s
        clock.t = (i + 1) * 0.1
        p.advance(2**20)
    p.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10, lines
    assert lines[0] == "convert hf -> mcore: 100.0 MiB of 1000.0 MiB (10%), 10.0 MiB/s"
    assert lines[-1].startswith("convert hf -> mcore: 1000.0 MiB of 1000.0 MiB (100%)")


def test_preprocess_lines_keep_the_log_interval_but_no_more_often_than_the_throttle(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    r = ProgressReporter(None, 10, console=_plain(), throttle=LineThrottle(5, clock))
    for i in range(200):  # 10 documents a batch, one batch a second
        clock.t = float(i)
        r.advance(10, 10, 100)
    r.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 40  # every 5 s, though the log interval (10 docs) is passed every batch
    assert lines[0].startswith("processed 10 documents, 100 tokens")


def test_a_bad_interval_setting_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("Q7X2_PROGRESS_SECONDS", "soon")
    assert progress_interval() == 10.0
    monkeypatch.setenv("Q7X2_PROGRESS_SECONDS", "2.5")
    assert progress_interval() == 2.5


def test_a_conversion_outside_a_terminal_reports_its_bytes(tiny_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("Q7X2_PROGRESS_SECONDS", "0")  # every tensor: the lines themselves are under test
    assert main(["convert", "-i", str(tiny_hf), "-o", str(tmp_path / "mg"), "--tp", "2"]) == 0
    assert main(["convert", "--from", "mg", "--to", "hf", "-i", str(tmp_path / "mg"), "-o", str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    to_mcore = re.findall(r"^convert hf -> mcore: .* of (.*) \((\d+)%\)", err, re.M)
    to_hf = re.findall(r"^convert mcore -> hf: .* of (.*) \((\d+)%\)", err, re.M)
    assert to_mcore and to_hf, err
    assert to_mcore[-1][1] == "100" and to_hf[-1][1] == "100"
    assert len({total for total, _ in to_mcore}) == 1
