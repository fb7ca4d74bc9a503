"""NPU health (npu-smi), NPU network links and device IPs (hccn_tool) of one host, in one round trip.

`npu-smi info` prints a table whose first row per NPU is `| <NPU id>  <name> | <Health> | ...`;
Health is OK, Warning, Alarm or Critical. `hccn_tool -i N -link -g` prints `link status: UP`
(or DOWN) for the NPU's RoCE port. A real tool takes a noticeable fraction of a second per
call, so the per-NPU link queries run side by side on the host instead of one SSH command each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from q7x2_deploy.executor.npu_network import judge_device_ips
from q7x2_deploy.executor.probe import Check, parse_probe, split_rc
from q7x2_deploy.inventory import npu_ranges
from q7x2_deploy.transport import Transport

# $1: 1 to run npu-smi; then the NPU indices whose links and device IPs to query. Every line
# of the links and ip sections is `<index> <exit status> <output on one line>`, written with
# one printf so that lines of parallel queries never interleave.
_NPU_SCRIPT = r"""
smi=$1; shift
echo "@npu-smi"
if [ "$smi" = 1 ]; then npu-smi info 2>&1; echo "@rc $?"; fi
query() {
  for i in "$@"; do
    ( out=$(hccn_tool -i "$i" "$q" -g 2>&1); rc=$?
      printf '%s %s %s\n' "$i" "$rc" "$(printf '%s' "$out" | tr '\n' ' ')" ) &
  done
  wait
}
echo "@links"; q=-link; query "$@"
echo "@ip"; q=-ip; query "$@"
if [ "$#" -gt 0 ] && [ -r /etc/hccn.conf ]; then echo "@hccn.conf"; cat /etc/hccn.conf; fi
echo "@end"
"""

_NPU_ROW = re.compile(r"^\|\s*(\d+)\s+[A-Za-z0-9][\w.-]*\s*\|\s*([A-Za-z]+)\s*\|")
_LINK_STATUS = re.compile(r"link status:\s*([A-Za-z]+)", re.IGNORECASE)
_FAILING_HEALTH = ("Alarm", "Critical")


def parse_npu_smi(output: str) -> dict[int, str]:
    """NPU id -> Health from `npu-smi info`."""
    health: dict[int, str] = {}
    for line in output.splitlines():
        m = _NPU_ROW.match(line.strip())
        if m:
            health.setdefault(int(m.group(1)), m.group(2))
    return health


def link_is_up(exit_status: int, output: str) -> bool:
    m = _LINK_STATUS.search(output)
    if m:
        return m.group(1).upper() == "UP"
    return exit_status == 0 and "UP" in output.upper().split()


def judge_npu_smi(lines: list[str], npus: list[int]) -> Check:
    """The job's NPUs (`npus`) must be listed and not Alarm/Critical; any other NPU's trouble,
    and a Warning on a used one, only warns."""
    rc, lines = split_rc(lines)
    if rc != 0:
        last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")
        return Check("npu", "fail", f"npu-smi info failed (exit {rc}): {last[-160:]}")
    health = parse_npu_smi("\n".join(lines))
    if not health:
        return Check("npu", "warn", "npu-smi info ran but listed no NPUs in a known format")
    bad = [f"NPU {i} {health[i]}" for i in npus if health.get(i) in _FAILING_HEALTH]
    warn = [f"NPU {i} {health[i]}" for i in npus if i in health and health[i] not in _FAILING_HEALTH
            and health[i] != "OK"]
    unlisted = [i for i in npus if i not in health]
    missing = [f"NPU {npu_ranges(unlisted)} not listed by npu-smi"] if unlisted else []
    unused = [f"NPU {i} {h}" for i, h in sorted(health.items()) if i not in npus and h != "OK"]
    aside = [f"not used: {', '.join(unused)}"] if unused else []
    if bad or missing:
        parts = ([f"unhealthy: {', '.join(bad + warn)}"] if bad else warn) + missing + aside
        return Check("npu", "fail", "; ".join(parts))
    if warn or unused:
        return Check("npu", "warn", "; ".join(warn + aside))
    if not npus:
        return Check("npu", "ok", f"{len(health)} NPUs healthy, none used")
    return Check("npu", "ok", f"NPU {npu_ranges(npus)} healthy")


def judge_links(lines: list[str], npus: list[int]) -> Check:
    seen: dict[int, bool] = {}
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].lstrip("-").isdigit():
            seen[int(parts[0])] = link_is_up(int(parts[1]), parts[2] if len(parts) > 2 else "")
    down = [str(i) for i in npus if not seen.get(i, False)]
    if down:
        return Check("links", "fail", f"link down on NPU {', '.join(down)}")
    return Check("links", "ok", f"{len(npus)} links up")


@dataclass(frozen=True)
class NpuFindings:
    checks: list[Check]  # the npu, links and devip rows
    device_ips: dict[int, str]  # used NPU -> its device IP, as hccn_tool reports it


def check_npus(t: Transport, *, has_npu_smi: bool, has_hccn_tool: bool, npus: list[int],
               ascend: bool) -> NpuFindings:
    """The `npu`, `links` and `devip` rows of a host's preflight, in one round trip."""
    query_links = has_hccn_tool and bool(npus)
    findings: list[Check] = []
    if has_npu_smi or query_links:
        r = t.run(["sh", "-c", _NPU_SCRIPT, "sh", "1" if has_npu_smi else "0",
                   *(str(i) for i in npus if query_links)], timeout=180)
        sec = parse_probe(r.stdout)
    else:
        sec = {}
    if has_npu_smi:
        findings.append(judge_npu_smi(sec.get("npu-smi", []), npus))
    else:
        findings.append(Check("npu", "warn" if ascend else "skip", "npu-smi not installed"))
    ips: dict[int, str] = {}
    if query_links:
        findings.append(judge_links(sec.get("links", []), npus))
        devip, ips = judge_device_ips(sec.get("ip", []), sec.get("hccn.conf"), npus)
        findings.append(devip)
    else:
        why = "no NPUs" if has_hccn_tool else "hccn_tool not installed"
        findings += [Check("links", "skip", why), Check("devip", "skip", why)]
    return NpuFindings(findings, ips)
