"""Run `q7x2-deploy validate` on many inventories under a memory limit and a timeout, and check
the contract for bad input: exit 2, no traceback, exactly one line per violation, each line
naming the file (and its line where one is expected), the YAML path and the rule.

One driver process runs the real CLI entry point (`q7x2_deploy.cli.main`) once per file, so a
table of a hundred cases costs one interpreter start, not a hundred; the memory limit and the
timeout apply to all of them together, so one case that blows up fails the whole batch.
Cases that need a process of their own (a FIFO that could block forever) use `run_cli`.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The driver's address space: Python, pydantic, rich and paramiko need about 400 MiB of it; a
# billion-laughs document or a read of /dev/zero would need many GiB.
MEMORY_LIMIT = 1536 << 20
TIMEOUT_S = 300

_DRIVER = r"""
import contextlib, io, json, sys, traceback
from q7x2_deploy.cli import main
results = []
for name in sys.argv[1:]:
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(["validate", name])
    except SystemExit as e:
        rc = e.code
    except BaseException:
        rc = "crash"
        err.write(traceback.format_exc())
    results.append({"file": name, "rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue()})
print(json.dumps(results))
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@dataclass
class Case:
    """An inventory (its YAML text, or a path to use as it is) and the violations it must give:
    (YAML path, a fragment of the rule), one per expected line; `line` True if a line number
    must be named."""

    name: str
    text: str | None
    expect: list[tuple[str, str]]
    path: Path | None = None
    line: bool = True
    extra_files: dict[str, str] = field(default_factory=dict)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "q7x2_deploy.cli", *args], capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory
    )


def run_batch(files: list[Path]) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, *map(str, files)], capture_output=True, text=True, timeout=TIMEOUT_S, preexec_fn=_limit_memory
    )
    assert proc.returncode == 0, f"the driver died (memory limit?): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def assert_one_line_each(file: str, rc: object, stderr: str, expect: list[tuple[str, str]], line: bool = True) -> None:
    assert "Traceback" not in stderr, stderr
    assert rc == 2, f"{file}: exit {rc}, stderr: {stderr}"
    lines = stderr.splitlines()
    assert len(lines) == len(expect), f"{file}: expected {len(expect)} lines, got:\n{stderr}"
    where = re.escape(file) + (r":\d+" if line else r"(:\d+)?")
    unmatched = list(lines)
    for path, fragment in expect:
        hit = next((ln for ln in unmatched if re.match(rf"{where}: {re.escape(path)}: ", ln) and fragment in ln), None)
        assert hit is not None, f"{file}: no line for {path}: ...{fragment}... in:\n{stderr}"
        unmatched.remove(hit)
    for ln in lines:
        assert ln.isprintable(), f"a violation line holds a non-printing character: {ln!r}"
        assert len(ln) < 2000, f"a violation line is {len(ln)} characters long"


def _validate_in_process(files: list[Path]) -> list[dict]:
    """The same entry point as the driver, in this process: for many hypothesis examples."""
    import contextlib
    import io

    from q7x2_deploy.cli import main

    results = []
    for name in files:
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(["validate", str(name)])
        results.append({"file": str(name), "rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue()})
    return results


def write_cases(tmp: Path, cases: list[Case]) -> list[Path]:
    files = []
    for i, case in enumerate(cases):
        for name, content in case.extra_files.items():
            (tmp / name).write_text(content, encoding="utf-8")
        if case.path is not None:
            files.append(case.path)
        else:
            assert case.text is not None
            f = tmp / f"case{i:03d}.yaml"
            f.write_text(case.text, encoding="utf-8")
            files.append(f)
    return files


def check_cases(tmp: Path, cases: list[Case], in_process: bool = False) -> None:
    """Every case refused as its Case says; in a driver process under the limits by default."""
    files = write_cases(tmp, cases)
    results = _validate_in_process(files) if in_process else run_batch(files)
    failures = []
    for case, result in zip(cases, results, strict=True):
        try:
            assert_one_line_each(result["file"], result["rc"], result["stderr"], case.expect, case.line)
        except AssertionError as e:
            failures.append(f"[{case.name}] {e}")
    assert not failures, "\n\n".join(failures)
