"""NPU utilisation, HBM use and temperature of one host, from one `npu-smi info`.

npu-smi's table has two rows per NPU: `| <id> <name> | <Health> | <Power(W)> <Temp(C)> <Hugepages> |`
then `| <chip> | <Bus-Id> | <AICore(%)> <Memory used / total> <HBM used / total> |`. Only the
numbers are read; a table this parser does not understand gives no figures rather than wrong ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIRST_ROW = re.compile(r"^\|\s*(\d+)\s+[A-Za-z0-9][\w.-]*\s*\|\s*[A-Za-z]+\s*\|(.*)\|\s*$")
_SECOND_ROW = re.compile(r"^\|\s*\d+\s*\|\s*[0-9A-Fa-f:.]+\s*\|(.*)\|\s*$")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
# One query per host and refresh, and nothing when the host has no npu-smi (cpu hosts).
USAGE_ARGV = ["sh", "-c", "command -v npu-smi >/dev/null 2>&1 || exit 3; npu-smi info 2>&1"]


@dataclass(frozen=True)
class NpuUsage:
    npu: int
    aicore_pct: float
    hbm_used_mb: float
    hbm_total_mb: float
    temp_c: float


@dataclass(frozen=True)
class HostUsage:
    npus: int
    aicore_pct: float  # mean over NPUs
    hbm_used_mb: float  # sum
    hbm_total_mb: float
    temp_c: float  # hottest

    def describe(self) -> str:
        hbm = f"{self.hbm_used_mb / 1024:.0f}/{self.hbm_total_mb / 1024:.0f}G" if self.hbm_total_mb else "-"
        return f"{self.aicore_pct:.0f}% {hbm} {self.temp_c:.0f}C"


def parse_npu_usage(output: str) -> list[NpuUsage]:
    out: list[NpuUsage] = []
    pending: tuple[int, float] | None = None  # (npu, temperature) of a first row
    for raw in output.splitlines():
        line = raw.strip()
        if (m := _FIRST_ROW.match(line)) is not None:
            nums = _NUM.findall(m.group(2))
            pending = (int(m.group(1)), float(nums[1])) if len(nums) >= 2 else None
            continue
        if pending is not None and (m := _SECOND_ROW.match(line)) is not None:
            nums = [float(x) for x in _NUM.findall(m.group(1))]
            if len(nums) >= 5:
                out.append(NpuUsage(pending[0], nums[0], nums[-2], nums[-1], pending[1]))
            pending = None
    return out


def summarize(npus: list[NpuUsage], used: list[int] | None = None) -> HostUsage | None:
    """The host's figures over the NPUs the job uses (all when not known)."""
    chosen = [n for n in npus if used is None or n.npu in used] or npus
    if not chosen:
        return None
    return HostUsage(len(chosen), sum(n.aicore_pct for n in chosen) / len(chosen),
                     sum(n.hbm_used_mb for n in chosen), sum(n.hbm_total_mb for n in chosen),
                     max(n.temp_c for n in chosen))
