"""Pinned against installed, one verdict per component."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from q7x2_runtime.doctor.pins import Pin

Verdict = Literal["ok", "mismatch", "missing"]


@dataclass(frozen=True)
class Finding:
    name: str
    want: str | None
    have: str | None
    verdict: Verdict

    def line(self) -> str:
        """One line: what was found, what the image pins."""
        want = self.want if self.want is not None else "any version"
        if self.verdict == "missing":
            return f"{self.name}: not found (pinned {want})"
        if self.verdict == "mismatch":
            return f"{self.name}: {self.have} installed, pinned {want}"
        return f"{self.name}: {self.have}" + ("" if self.want is None or self.want == self.have else f" (pinned {want})")


def _release(version: str) -> list[str]:
    return version.split("+", 1)[0].split(".")


def versions_match(kind: str, want: str, have: str) -> bool:
    """pip's `==want` for distributions (a local label such as +cpu is ignored unless pinned:
    2.1.0 matches 2.1.0+cpu but not 2.1.0.post12); a Python pin of 3.10 matches any 3.10.x;
    a source ref matches its tag with or without a leading v."""
    if kind == "python":
        w = _release(want)
        return _release(have)[: len(w)] == w
    if kind == "source":
        return have.removeprefix("v") == want.removeprefix("v")
    if kind == "cann":
        return have == want
    if "+" in want:
        return have == want
    return have.split("+", 1)[0] == want


def judge(pin: Pin, have: str | None) -> Finding:
    if have is None:
        return Finding(pin.name, pin.want, None, "missing")
    if pin.want is None or versions_match(pin.kind, pin.want, have):
        return Finding(pin.name, pin.want, have, "ok")
    return Finding(pin.name, pin.want, have, "mismatch")


def compare(pins: list[Pin], have: dict[str, str | None]) -> list[Finding]:
    """`have` maps each pin's name to what is installed (None: absent)."""
    return [judge(p, have.get(p.name)) for p in pins]
