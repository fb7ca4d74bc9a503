"""The CLIs import only the module of the command they run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from q7x2_runtime.command_registry import _modules_needed

MODULES = {"a": "pkg.a", "b": "pkg.b"}


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["a", "--x", "1"], {"a": "pkg.a"}),
        (["b"], {"b": "pkg.b"}),
        (["--help"], MODULES),
        ([], MODULES),
        (["nope"], MODULES),  # argparse then lists every choice
        (["-h", "a"], {"a": "pkg.a"}),  # `a -h` and `-h a` both want a's help only
    ],
)
def test_modules_needed(argv, wanted):
    assert _modules_needed(MODULES, argv) == wanted


def test_runtime_preprocess_imports_neither_numpy_nor_pydantic_before_it_starts():
    """What `q7x2-runtime preprocess` imports before its own code runs: no other command's
    dependencies (make-sample's numpy, pretrain's pydantic)."""
    code = (
        "import sys\n"
        "from q7x2_runtime import command_registry as r\n"
        "seen = []\n"
        "real = r.register_commands\n"
        "def spy(sub, modules, **kw):\n"
        "    real(sub, modules, **kw)\n"
        "    seen.append(sorted(m for m in ('numpy', 'pydantic') if m in sys.modules))\n"
        "    raise SystemExit(0)\n"
        "r.register_commands = spy\n"
        "from q7x2_runtime.cli import main\n"
        "try:\n"
        "    main(['preprocess', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(seen)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[[]]"
