"""The NPUs' own network (RoCE), as HCCL will use it: each used NPU's device IP against
/etc/hccn.conf, device IPs unique across the cluster, and a reachability matrix in which every
used NPU pings the same-position NPU of every other host.

`hccn_tool -i N -ip -g` prints `ipaddr:A.B.C.D` and `netmask:...`; /etc/hccn.conf holds
`address_N=A.B.C.D` per NPU; `hccn_tool -i N -ping -g address IP` prints a `recv seq=...` or
`recv time out seq=...` line per probe and `T packets transmitted, R received, L% packet loss`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from q7x2_deploy.executor.probe import Check, parse_probe
from q7x2_deploy.transport import Transport

HCCN_CONF = "/etc/hccn.conf"

_IPADDR = re.compile(r"ipaddr\s*:\s*([0-9A-Fa-f.:]+)")
_CONF_ADDRESS = re.compile(r"^\s*address_(\d+)\s*=\s*(\S+)\s*$")
_PING_SUMMARY = re.compile(r"(\d+)\s+packets transmitted,\s*(\d+)\s+received")


def parse_hccn_conf(text: str) -> dict[int, str]:
    """NPU index -> address_N of /etc/hccn.conf."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        m = _CONF_ADDRESS.match(line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def parse_indexed(lines: list[str]) -> dict[int, tuple[int, str]]:
    """`<index> <exit status> <output on one line>` lines -> index -> (status, output)."""
    out: dict[int, tuple[int, str]] = {}
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].lstrip("-").isdigit():
            out[int(parts[0])] = (int(parts[1]), parts[2].strip() if len(parts) > 2 else "")
    return out


def device_ips(ip_lines: list[str]) -> dict[int, str]:
    found: dict[int, str] = {}
    for i, (_rc, text) in parse_indexed(ip_lines).items():
        m = _IPADDR.search(text)
        if m:
            found[i] = m.group(1)
    return found


def judge_device_ips(ip_lines: list[str], conf_lines: list[str] | None, npus: list[int]) -> tuple[Check, dict[int, str]]:
    """The host's own part of the `devip` row (the cluster-wide uniqueness comes later)."""
    raw = parse_indexed(ip_lines)
    ips = device_ips(ip_lines)
    problems = []
    for i in npus:
        if i not in ips:
            problems.append(f"NPU {i} has no device IP (hccn_tool -i {i} -ip -g: {raw.get(i, (1, 'no answer'))[1][:80] or 'no output'})")
    if conf_lines is None:
        return (Check("devip", "fail", "; ".join(problems)) if problems else
                Check("devip", "warn", f"no {HCCN_CONF} to compare the device IPs with")), ips
    conf = parse_hccn_conf("\n".join(conf_lines))
    for i in npus:
        if i in ips and conf.get(i) != ips[i]:
            said = f"says {conf[i]}" if i in conf else f"has no address_{i}"
            problems.append(f"NPU {i} has device IP {ips[i]} but {HCCN_CONF} {said}")
    if problems:
        return Check("devip", "fail", "; ".join(problems)), ips
    return Check("devip", "ok", f"{len(npus)} device IPs as in {HCCN_CONF}"), ips


def duplicate_ips(per_host: dict[str, dict[int, str]]) -> dict[str, list[str]]:
    """host -> one line per device IP it shares with another NPU anywhere in the cluster."""
    owners: dict[str, list[tuple[str, int]]] = {}
    for host, ips in per_host.items():
        for npu, ip in sorted(ips.items()):
            owners.setdefault(ip, []).append((host, npu))
    out: dict[str, list[str]] = {}
    for ip, who in owners.items():
        if len(who) < 2:
            continue
        for host, npu in who:
            others = ", ".join(f"{h} NPU {n}" for h, n in who if (h, n) != (host, npu))
            out.setdefault(host, []).append(f"NPU {npu} device IP {ip} is also {others}'s")
    return out


# $1: ping count; then triples NPU PEER IP. All pings run side by side; each result is one line
# `<NPU> <peer> <exit status> <output on one line>`, written by one printf.
PING_SCRIPT = r"""
echo "@ping"
while [ "$#" -ge 3 ]; do
  ( out=$(hccn_tool -i "$1" -ping -g address "$3" 2>&1); rc=$?
    printf '%s %s %s %s\n' "$1" "$2" "$rc" "$(printf '%s' "$out" | tr '\n' ' ')" ) &
  shift 3
done
wait
echo "@end"
"""


@dataclass(frozen=True)
class PingTarget:
    npu: int  # this host's NPU
    peer: str  # the other host
    peer_npu: int
    ip: str  # the peer NPU's device IP


@dataclass(frozen=True)
class PingResult:
    target: PingTarget
    sent: int
    received: int
    detail: str

    @property
    def ok(self) -> bool:
        return self.received > 0 and self.received == self.sent


def ping_targets(host: str, npus: dict[str, list[int]], ips: dict[str, dict[int, str]]) -> list[PingTarget]:
    """Each used NPU of `host` towards the NPU at the same position of every other host."""
    out = []
    for pos, npu in enumerate(npus[host]):
        for peer, peer_npus in npus.items():
            if peer != host and pos < len(peer_npus) and peer_npus[pos] in ips.get(peer, {}):
                out.append(PingTarget(npu, peer, peer_npus[pos], ips[peer][peer_npus[pos]]))
    return out


def parse_ping(output: str) -> tuple[int, int]:
    """(sent, received) from one hccn_tool ping; (0, 0) when no summary line was printed."""
    m = _PING_SUMMARY.search(output)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def run_pings(t: Transport, targets: list[PingTarget]) -> list[PingResult]:
    args = [x for tg in targets for x in (str(tg.npu), tg.peer, tg.ip)]
    r = t.run(["sh", "-c", PING_SCRIPT, "sh", *args], timeout=120)
    lines = parse_probe(r.stdout).get("ping", [])
    answers: dict[tuple[int, str], str] = {}
    for line in lines:
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[0].isdigit():
            answers[(int(parts[0]), parts[1])] = parts[3] if len(parts) > 3 else ""
    results = []
    for tg in targets:
        text = answers.get((tg.npu, tg.peer))
        sent, received = parse_ping(text or "")
        detail = ("no answer from hccn_tool" if text is None else
                  f"{received} of {sent} replies" if sent else (text.strip()[:80] or "no output"))
        results.append(PingResult(tg, sent, received, detail))
    return results


def judge_pings(host: str, host_ips: dict[int, str], results: list[PingResult]) -> Check:
    bad = [r for r in results if not r.ok]
    if not results:
        return Check("ping", "skip", "no peer NPUs to ping")
    if bad:
        def end(r: PingResult) -> str:
            t = r.target
            return f"NPU {t.npu} ({host_ips.get(t.npu, '?')}) -> {t.peer} NPU {t.peer_npu} ({t.ip}): {r.detail}"
        more = f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""
        return Check("ping", "fail", "unreachable: " + "; ".join(end(r) for r in bad[:4]) + more)
    return Check("ping", "ok", f"{len(results)} peer NPUs answer")
