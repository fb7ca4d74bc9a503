"""What the container actually holds, read without importing torch or torch_npu (importing
torch_npu needs the NPU driver; the versions must be readable on a host without one and
during the image build)."""

from __future__ import annotations

import ast
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from q7x2_runtime.doctor.pins import Pin

# Where CANN's set_env.sh points (ASCEND_TOOLKIT_HOME, ASCEND_HOME_PATH), then the default
# install locations of the toolkit (older releases under ascend-toolkit/latest, newer ones
# under cann). The version is the `version=` line of <arch>-linux/ascend_toolkit_install.info.
CANN_ROOTS_ENV = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")
CANN_DEFAULT_ROOTS = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")
CANN_INFO = "ascend_toolkit_install.info"
SOURCE_RECORD = ".q7x2-source.json"


def python_version() -> str:
    return platform.python_version()


def dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cann_info_file(environ: dict[str, str] | None = None, arch: str | None = None) -> Path | None:
    env = os.environ if environ is None else environ
    roots = [env[k] for k in CANN_ROOTS_ENV if env.get(k)] + list(CANN_DEFAULT_ROOTS)
    arch = arch or platform.machine()
    for root in roots:
        candidates = [Path(root) / f"{arch}-linux" / CANN_INFO, *sorted(Path(root).glob(f"*-linux/{CANN_INFO}"))]
        for c in candidates:
            if c.is_file():
                return c
    return None


def cann_version(environ: dict[str, str] | None = None, arch: str | None = None) -> str | None:
    info = cann_info_file(environ, arch)
    if info is None:
        return None
    for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "version" and value.strip():
            return value.strip()
    return None


def megatron_core_version(megatron_dir: Path) -> str | None:
    """MAJOR.MINOR.PATCH(+PRE_RELEASE) from megatron/core/package_info.py, read as text."""
    try:
        tree = ast.parse((megatron_dir / "core" / "package_info.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if isinstance(node.value, ast.Constant):
                values[node.targets[0].id] = node.value.value
    parts = [values.get(k) for k in ("MAJOR", "MINOR", "PATCH")]
    if not all(isinstance(p, int) for p in parts):
        return None
    return ".".join(map(str, parts)) + str(values.get("PRE_RELEASE") or "")


def source_ref(source_dir: Path) -> str | None:
    """The git tag, else branch, else commit build-image recorded for vendored sources; None
    without a record."""
    try:
        data = json.loads((source_dir / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    ref = data.get("tag") or data.get("branch") or data.get("commit")
    return str(ref) if ref else None


def installed(pin: Pin) -> str | None:
    """The version of pin's component present here, or None when it is absent."""
    if pin.kind == "python":
        return python_version()
    if pin.kind == "dist":
        assert pin.dist is not None
        return dist_version(pin.dist)
    if pin.kind == "cann":
        return cann_version()
    assert pin.path is not None
    if pin.kind == "megatron":
        return megatron_core_version(Path(pin.path))
    if not Path(pin.path).is_dir():
        return None
    return source_ref(Path(pin.path)) or "unrecorded"

