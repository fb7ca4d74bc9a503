"""What remote probes return: shell output split in `@name` sections, and one preflight row.

A probe is one `sh -c` script per host (one round trip); each part of it prints `@name` and
then its lines, and a command's exit status as a last `@rc N` line of its section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str


def parse_probe(output: str) -> dict[str, list[str]]:
    """Sections of the probe's output by name; a section's `@rc N` line is kept as its last line."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@") and not line.startswith("@rc "):
            current = sections.setdefault(line[1:].strip(), [])
        elif current is not None:
            current.append(line)
    return sections


def split_rc(lines: list[str]) -> tuple[int, list[str]]:
    """(exit status, lines without it); 1 when the section has no `@rc` line (it never ran to the end)."""
    if lines and lines[-1].startswith("@rc "):
        return int(lines[-1][4:]), lines[:-1]
    return 1, lines
