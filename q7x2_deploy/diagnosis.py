"""Name the host that most likely caused a failed job, from every host's log and the last check.

When one rank of a collective job dies, every other rank fails too, a little later and much more
loudly: HCCL reports EI0002/EI0006 timeouts, gloo reports a closed connection, torchrun prints a
ChildFailedError on each node. Grepping sixteen logs for "error" finds the consequences first. So
the evidence is read in classes, and a class that is a *consequence* of another host's trouble
(a timeout waiting for a peer, a connection the peer closed) points at that peer, not at the host
that printed it. Pure: no I/O beyond what the caller hands in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

# --- the classes, strongest evidence first -------------------------------------------------------
HOST_LOST = "host lost"
NPU_FAULT = "NPU fault"
NPU_OOM = "NPU out of memory"
SIGNAL = "killed by a signal"
PYTHON_EXCEPTION = "Python exception"
HCCL_CONNECT_TIMEOUT = "HCCL connect timeout (EI0006)"
HCCL_EXEC_TIMEOUT = "HCCL execution timeout (EI0002)"
GLOO_CONNECTION = "gloo connection failure"
CONTAINER_EXIT = "container exited"
UNKNOWN = "unknown"

_OOM = re.compile(r"(?:NPU|CUDA|CPU)? ?out of memory\. Tried to allocate|OutOfMemoryError|Cannot allocate memory")
_SEGV = re.compile(r"Segmentation fault|SIGSEGV|Signal 11\b|Fatal Python error: Segmentation")
_SIGNAL = re.compile(r"Signal (\d+) \((SIG[A-Z]+)\) received by PID|exitcode\s*:\s*-(\d+)")
_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):")
_EXC_LINE = re.compile(r"^(?:\[rank\d+\]: )?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?::\s*(.*))?$")
_EI0006 = re.compile(r"EI0006|wait socket establish timeout|Get_Socket|socket establish", re.IGNORECASE)
_EI0006_RANKS = re.compile(r"role\[(\d+)\]\s*rank\[(\d+)\]")
_EI0002 = re.compile(r"EI0002|Notify register times out|hccl fftsplus task timeout|HCCL watchdog", re.IGNORECASE)
_REMOTE_RANK = re.compile(r"remote rank:?\s*\[(\d+)\]")
_EXCEPTION_LOCATION = re.compile(r"Cluster Exception Location\[IP/ID\]:\[([0-9A-Fa-f.:]+)/(\d+)\]")
_GLOO = re.compile(r"gloo.*(?:Connection closed by peer|Connection reset by peer|Connection refused|Timed out)"
                   r"|Connection closed by peer \[|Connection reset by peer", re.IGNORECASE)
_PEER_ADDR = re.compile(r"(?:by peer|to) \[([0-9A-Fa-f.:]+)\]:\d+")
_CONSEQUENCE_EXC = re.compile(r"DistBackendError|ChildFailedError|DistStoreError|RendezvousError|"
                              r"torch\.distributed\.elastic|gloo|HCCL|Connection (?:closed|reset)|"
                              r"ProcessGroup|watchdog", re.IGNORECASE)
_EVIDENCE_LINES = 4
# torchrun and torch prefix a rank's lines: "[rank3]: ", "[default3]:"
_RANK_PREFIX = re.compile(r"^\s*\[(?:rank|default)\d+\]:\s?")


@dataclass(frozen=True)
class HostEvidence:
    """What is known about one host when the job ended."""

    host: str
    rank: int  # node rank
    address: str
    lines: Sequence[str] = ()  # the host's log, oldest first
    lost: bool = False  # stopped answering (from the supervisor)
    check_failures: Sequence[str] = ()  # failed preflight rows of the last check, e.g. "npu: NPU 1 Alarm"
    failed_first: bool = False  # the host whose failure the supervisor saw first


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    host: str | None
    rank: int | None
    evidence: list[str] = field(default_factory=list)  # "host: line" entries
    detail: str = ""

    def headline(self) -> str:
        where = f" on {self.host} (rank {self.rank})" if self.host is not None else ""
        return f"likely cause: {self.cause}{where}" + (f": {self.detail}" if self.detail else "")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Finding:
    cause: str
    host: HostEvidence
    lines: list[str]
    detail: str = ""
    index: int = 0  # position of the first evidence line in the host's log


def _hits(ev: HostEvidence, pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    return [(i, ln) for i, ln in enumerate(ev.lines) if pattern.search(ln)]


def _first_exception(ev: HostEvidence) -> tuple[int, str, list[str]] | None:
    """The first traceback's final exception line that is not a communication consequence."""
    lines = [_RANK_PREFIX.sub("", ln) for ln in ev.lines]
    for i, ln in enumerate(lines):
        if not _TRACEBACK.search(ln.strip()):
            continue
        for j in range(i + 1, min(i + 400, len(lines))):
            m = _EXC_LINE.match(lines[j].strip())
            if m:
                if not _CONSEQUENCE_EXC.search(lines[j]):
                    return i, lines[j].strip(), [lines[i].strip(), *(x.strip() for x in lines[max(i + 1, j - 2):j + 1])]
                break
    return None


def _host_of_global_rank(rank: int, hosts: Sequence[HostEvidence], npus_per_node: int) -> HostEvidence | None:
    node = rank // max(npus_per_node, 1)
    return next((h for h in hosts if h.rank == node), None)


def _host_of_address(addr: str, hosts: Sequence[HostEvidence]) -> HostEvidence | None:
    return next((h for h in hosts if h.address == addr), None)


def diagnose(hosts: Sequence[HostEvidence], *, npus_per_node: int = 1) -> Diagnosis:
    """The most likely cause of a failed job and the host it points at, with the evidence."""
    findings = _findings(hosts, npus_per_node)
    if not findings:
        first = next((h for h in hosts if h.failed_first), None)
        if first is not None:
            return Diagnosis(CONTAINER_EXIT, first.host, first.rank,
                             [f"{first.host}: {ln}" for ln in list(first.lines)[-_EVIDENCE_LINES:]],
                             "no known error pattern in the logs; see the host's last lines")
        return Diagnosis(UNKNOWN, None, None, [], "no known error pattern in any host's log")
    best = findings[0]
    return Diagnosis(best.cause, best.host.host, best.host.rank,
                     [f"{best.host.host}: {ln}" for ln in best.lines[:_EVIDENCE_LINES]] +
                     [f"{f.host.host}: {f.lines[0]}" for f in findings[1:4] if f.lines],
                     best.detail)


def _findings(hosts: Sequence[HostEvidence], npus_per_node: int) -> list[_Finding]:
    """Every finding, strongest first: direct faults, then a host's own error, then the peers
    that communication timeouts point at."""
    direct: list[_Finding] = []
    for ev in hosts:
        if ev.lost:
            direct.append(_Finding(HOST_LOST, ev, ["stopped answering SSH"], "no SSH reply"))
    for ev in hosts:
        npu = [f for f in ev.check_failures if "npu" in f.lower() or "link" in f.lower()]
        if npu:
            direct.append(_Finding(NPU_FAULT, ev, list(npu), npu[0]))
    own: list[_Finding] = []
    for ev in hosts:
        for cause, pattern in ((NPU_OOM, _OOM), (SIGNAL, _SEGV)):
            hits = _hits(ev, pattern)
            if hits:
                own.append(_Finding(cause, ev, [hits[0][1].strip()], index=hits[0][0]))
        exc = _first_exception(ev)
        waited = [i for p in (_EI0002, _EI0006, _GLOO) for i, _ in _hits(ev, p)]
        if exc is not None and waited and min(waited) < exc[0]:
            exc = None  # raised because a peer never answered: the peer is the finding
        if exc is not None:
            i, last, context = exc
            own.append(_Finding(PYTHON_EXCEPTION, ev, [last, *context], last, index=i))
        sig = _hits(ev, _SIGNAL)
        if sig and not any(f.host is ev for f in own):
            own.append(_Finding(SIGNAL, ev, [sig[0][1].strip()], _signal_name(sig[0][1]), index=sig[0][0]))
    # Within own errors: OOM and segfaults are causes, a Python exception may be the reaction.
    order = {NPU_OOM: 0, SIGNAL: 1, PYTHON_EXCEPTION: 2}
    own.sort(key=lambda f: (order[f.cause], not f.host.failed_first, f.index))
    return direct + own + _pointed_at(hosts, npus_per_node)


def _signal_name(line: str) -> str:
    m = _SIGNAL.search(line)
    if m is None:
        return ""
    if m.group(2):
        return f"{m.group(2)} (signal {m.group(1)})"
    return f"signal {m.group(3)}"


def _pointed_at(hosts: Sequence[HostEvidence], npus_per_node: int) -> list[_Finding]:
    """Timeouts and closed connections blame the peer; the hosts that did not complain are the
    ones the complainers waited for."""
    out: list[_Finding] = []
    blamed: dict[str, list[str]] = {}
    reporters: dict[str, set[str]] = {}
    for ev in hosts:
        for cause, pattern in ((HCCL_EXEC_TIMEOUT, _EI0002), (HCCL_CONNECT_TIMEOUT, _EI0006), (GLOO_CONNECTION, _GLOO)):
            for _, ln in _hits(ev, pattern):
                reporters.setdefault(cause, set()).add(ev.host)
                peer = _peer(ln, hosts, npus_per_node)
                if peer is not None and peer.host != ev.host:
                    blamed.setdefault(f"{cause}\0{peer.host}", []).append(f"(reported by {ev.host}) {ln.strip()}")
    for key, lines in blamed.items():
        cause, name = key.split("\0")
        peer = next(h for h in hosts if h.host == name)
        out.append(_Finding(cause, peer, lines, f"{len(reporters[cause])} host(s) waited for it"))
    for cause, who in reporters.items():
        silent = [h for h in hosts if h.host not in who]
        if silent and len(silent) < len(hosts) and not any(f.cause == cause for f in out):
            for h in silent:
                out.append(_Finding(cause, h, [f"every other host reported {cause}; {h.host} did not"],
                                    f"{', '.join(sorted(who))} timed out waiting for its ranks"))
    if not out:
        for cause, who in reporters.items():
            ev = next(h for h in hosts if h.host in who)
            hits = [ln for p in (_EI0002, _EI0006, _GLOO) for _, ln in _hits(ev, p)]
            out.append(_Finding(cause, ev, [hits[0].strip()] if hits else [], "reported on every host"))
    out.sort(key=lambda f: (not f.host.failed_first,))
    return out


def _peer(line: str, hosts: Sequence[HostEvidence], npus_per_node: int) -> HostEvidence | None:
    if (m := _EXCEPTION_LOCATION.search(line)) is not None:
        if (h := _host_of_address(m.group(1), hosts)) is not None:
            return h
    if (m := _REMOTE_RANK.search(line)) is not None:
        return _host_of_global_rank(int(m.group(1)), hosts, npus_per_node)
    if (m := _PEER_ADDR.search(line)) is not None:
        return _host_of_address(m.group(1), hosts)
    return None


def evidence_from_logs(
    logs: Mapping[str, Iterable[str]],
    ranks: Mapping[str, int],
    addresses: Mapping[str, str],
    *,
    lost: Iterable[str] = (),
    failed_first: str | None = None,
    check_failures: Mapping[str, Sequence[str]] | None = None,
) -> list[HostEvidence]:
    lost_set = set(lost)
    return [
        HostEvidence(host, ranks[host], addresses.get(host, ""), list(logs.get(host, ())), host in lost_set,
                     tuple((check_failures or {}).get(host, ())), host == failed_first)
        for host in ranks
    ]
