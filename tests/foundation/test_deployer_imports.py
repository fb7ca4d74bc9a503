"""The operator's install (`pip install '.[deploy]'`) never needs torch, and its commands never
need the sandbox: every deployer module imports in a fresh interpreter where torch cannot be
imported, and the deploy commands load no sandbox module."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import q7x2_deploy

ROOT = Path(__file__).resolve().parents[2]

# Runs in a child interpreter: a meta-path finder that refuses the runtime-only heavy packages
# before anything else is imported, then every deployer module.
_CHILD = r"""
import importlib, json, sys

BLOCKED = ("torch", "torch_npu", "megatron", "transformers", "mindspeed")

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is made unimportable by the test")
        return None

sys.meta_path.insert(0, Refuse())
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = f"{type(e).__name__}: {e}"
sandbox_loaded = sorted(m for m in sys.modules if m.startswith("q7x2_deploy.sandbox"))
print(json.dumps({"failed": failed, "sandbox_loaded": sandbox_loaded}))
"""


def _modules(prefix_filter: str = "") -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(q7x2_deploy.__path__, "q7x2_deploy.")]
    return sorted(n for n in names if n.startswith(prefix_filter))


def _import_in_child(modules: list[str]) -> dict[str, object]:
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(modules)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_deployer_module_imports_without_torch() -> None:
    modules = _modules()
    assert "q7x2_deploy.plan" in modules and "q7x2_deploy.sandbox.cluster" in modules  # the walk saw them
    out = _import_in_child(modules)
    assert out["failed"] == {}


def test_deploy_commands_do_not_load_the_sandbox() -> None:
    modules = ["q7x2_deploy.cli", *(m for m in _modules("q7x2_deploy.") if not m.startswith("q7x2_deploy.sandbox"))]
    out = _import_in_child(modules)
    assert out["failed"] == {}
    assert out["sandbox_loaded"] == []
