"""Keep concurrent test sessions on one machine apart.

Q7X2_TEST_SLOT=K (1-9) gives a test session sandboxes, subnets and image tags of its own, so
several checkouts can run their sandbox tests side by side on one machine without touching
each other's hosts or images. Unset (the default, and CI): the names the tests always used.
"""

from __future__ import annotations

import os


def slot() -> int:
    raw = os.environ.get("Q7X2_TEST_SLOT", "")
    if not raw:
        return 0
    if not raw.isdigit() or not 1 <= int(raw) <= 9:
        raise RuntimeError(f"Q7X2_TEST_SLOT={raw!r}: give a digit 1-9")
    return int(raw)


def sandbox(name: str, subnet: str) -> tuple[str, str]:
    """A sandbox name and /24 subnet for this slot (the third octet moves by 10 per slot)."""
    k = slot()
    if not k:
        return name, subnet
    a, b, c, rest = subnet.split(".", 3)
    return f"{name}{k}", f"{a}.{b}.{int(c) + 10 * k}.{rest}"


def tag(ref: str) -> str:
    """An image reference whose tag carries the slot."""
    k = slot()
    return f"{ref}-s{k}" if k else ref
