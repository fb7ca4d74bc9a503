"""Per-host copy-on-write overlays over directories of the machine."""

from __future__ import annotations

from pathlib import Path


def overlay_dirs(host_dir: Path, target: str) -> tuple[str, Path, Path]:
    """(target, upper, work) of a per-host overlay over the machine's directory target.

    The host sees the machine's files through it; what the host writes lands in upper only.
    """
    d = host_dir / "overlay" / target.strip("/").replace("/", "_")
    (d / "upper").mkdir(parents=True, exist_ok=True)
    (d / "work").mkdir(parents=True, exist_ok=True)
    return target, d / "upper", d / "work"
