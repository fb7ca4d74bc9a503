"""The runtime installs into Ascend images with Python 3.10: its modules must parse as 3.10."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "q7x2_runtime"


def test_runtime_parses_as_python_310() -> None:
    bad = []
    for path in sorted(RUNTIME.rglob("*.py")):
        try:
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))
        except SyntaxError as e:
            bad.append(f"{path.relative_to(RUNTIME)}:{e.lineno}: {e.msg}")
    assert not bad, "\n".join(bad)
