"""Where preprocess keeps what it learned about tokenizers and libraries between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path | None:
    """$Q7X2_CACHE_DIR, else $XDG_CACHE_HOME/q7x2 (~/.cache/q7x2); None if Q7X2_PREPROCESS_CACHE=0."""
    if os.environ.get("Q7X2_PREPROCESS_CACHE", "1") == "0":
        return None
    root = os.environ.get("Q7X2_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "q7x2"
    )
    return Path(root)


def installation_root() -> Path:
    """$Q7X2_SHARE_DIR, else /usr/local/share/q7x2: what the image build recorded about the
    libraries it installed (read-only at run time, so it holds for every container of the image)."""
    return Path(os.environ.get("Q7X2_SHARE_DIR") or "/usr/local/share/q7x2")
