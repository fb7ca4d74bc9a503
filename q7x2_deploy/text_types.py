"""Pydantic validators for names that end up in container names, labels, file names and
scheduler arguments (inventory, scheduler settings)."""

from __future__ import annotations

import re

from pydantic import AfterValidator

from q7x2_runtime.safe_text import show


def matching(pattern: str, what: str) -> AfterValidator:
    """A str validator by fullmatch (a `$` anchor would let a trailing newline through)."""
    compiled = re.compile(pattern)

    def check(v: str) -> str:
        if not compiled.fullmatch(v):
            raise ValueError(f"{show(v)} is not {what}")
        return v

    return AfterValidator(check)
