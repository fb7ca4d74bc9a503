"""Preflight: is every host ready to run its part of the plan? Checked in parallel, per host.

A host fails on the first thing that would make `up` fail later (no SSH, no engine, a device
or mount missing, unhealthy NPUs, the master port taken, no disk), so the operator learns it
in seconds instead of after an image transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from q7x2_deploy.errors import DeployError, reason_for
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.image_doctor import check_image_versions
from q7x2_deploy.executor.master_reach import check_master_reachable
from q7x2_deploy.executor.npu_health import check_npus
from q7x2_deploy.executor.npu_network import PingResult, duplicate_ips, judge_pings, ping_targets, run_pings
from q7x2_deploy.executor.probe import Check, Level, parse_probe, split_rc
from q7x2_deploy.plan import HostPlan
from q7x2_deploy.transport import Transport

CHECK_NAMES = ("ssh", "engine", "image", "devices", "npu", "links", "devip", "ping", "port", "reach", "nic", "disk", "doctor")
HCCL_BASE_PORT = 60000  # HCCL_IF_BASE_PORT's default: HCCL's host ports are base + device
MIN_FREE_GIB = 2.0  # below this, image delivery or a checkpoint save will fail
WARN_FREE_GIB = 20.0

# One round trip per host gathers everything but the NPU tools: the engine, the image, which
# paths exist, which tools are installed, listening ports, the host's addresses and free space.
# Everything from the inventory arrives as positional parameters ($1 the image, $2 whether to
# list listening ports, $3 an address whose interface to find, then the paths), never as text.
# On a busy cluster every process the probe starts is paid on every host, so it starts few: the
# container runtime's one image probe answers both "does the engine answer?" and "is the image
# there?"; the port table is read only where a port must be free (the kernel walks every socket
# of the machine to produce it); one df covers every directory.
_PROBE_SCRIPT = r"""
img=$1; want_ports=$2; nic_for=$3; shift 3
echo "@image"; {image_probe}
echo "@paths"; for p in "$@"; do [ -e "$p" ] || echo "$p"; done
echo "@tools"; for t in npu-smi hccn_tool; do command -v "$t" >/dev/null 2>&1 && echo "$t"; done
echo "@tcp"; [ "$want_ports" = 1 ] && cat /proc/net/tcp /proc/net/tcp6 2>/dev/null
if [ -n "$nic_for" ]; then
  echo "@resolve"; getent ahosts "$nic_for" 2>/dev/null | awk '{ print $1 }' | sort -u
  echo "@addr"; ip -o addr show 2>/dev/null
fi
echo "@df"; n=$#; for p in "$@" /var/lib/docker; do [ -d "$p" ] && set -- "$@" "$p"; done; shift "$n"
[ "$#" -gt 0 ] && df -Pk -- "$@" 2>/dev/null
echo "@end"
"""


def probe_script(image_probe: str) -> str:
    """The probe with the runtime's image probe in its place (str.replace: the script is full of braces)."""
    return _PROBE_SCRIPT.replace("{image_probe}", image_probe)


@dataclass
class HostReport:
    host: str
    rank: int
    checks: list[Check] = field(default_factory=list)
    npus: list[int] = field(default_factory=list)  # the NPUs the job's ranks run on here
    device_ips: dict[int, str] = field(default_factory=dict)  # used NPU -> device IP
    pings: list[PingResult] = field(default_factory=list)  # towards the other hosts' NPUs
    nic: str | None = None  # the interface found to carry the host's address (no `nic` given)

    def replace(self, check: Check) -> None:
        self.checks = [check if c.name == check.name else c for c in self.checks]
        if self.get(check.name) is None:
            self.checks.append(check)

    def add(self, name: str, level: Level, detail: str) -> None:
        self.checks.append(Check(name, level, detail))

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.level == "fail"]

    @property
    def image_id(self) -> str | None:
        c = self.get("image")
        return c.detail if c is not None and c.level == "ok" else None


@dataclass(frozen=True)
class HostNeeds:
    """What a host's containers use from the host: paths that must exist there."""

    devices: list[str]
    mounts: list[str]
    npu_indices: list[int]


def host_needs(host: HostPlan) -> HostNeeds:
    # The job directory is created by `up` (it writes the job file there), so it need not exist yet.
    mounts = [m.source for m in host.mounts if m.source != host.job_dir and m.source.startswith("/")]
    npus = [int(d.removeprefix("/dev/davinci")) for d in host.devices
            if d.removeprefix("/dev/davinci").isdigit()]
    return HostNeeds(list(host.devices), mounts, npus)


def _listening_ports(proc_net_tcp: str) -> set[int]:
    ports: set[int] = set()
    for line in proc_net_tcp.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[3] == "0A" and ":" in parts[1]:  # 0A = LISTEN
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _df_free_gib(df_output: str) -> dict[str, float]:
    free: dict[str, float] = {}
    for line in df_output.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6 and parts[3].isdigit():
            free[parts[5]] = int(parts[3]) / (1 << 20)
    return free


def interface_for(address: str, resolved: list[str], ip_addr: list[str]) -> str | None:
    """The interface of `ip -o addr` that holds the address (or what it resolves to)."""
    wanted = {address, *resolved}
    for line in ip_addr:
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("inet", "inet6") and parts[3].split("/")[0] in wanted:
            return parts[1].split("@")[0]
    return None


def _hccl_ports(host: HostPlan) -> list[int]:
    base = host.env.get("HCCL_IF_BASE_PORT", "").strip()
    start = int(base) if base.isdigit() else HCCL_BASE_PORT
    return [start + i for i in range(len(host.npus))]


def _port_check(host: HostPlan, listening: set[int], master_port: int | None) -> Check:
    taken: list[str] = []
    free: list[str] = []
    if master_port is not None:
        (taken if master_port in listening else free).append(f"master port {master_port}")
    hccl = _hccl_ports(host)
    if hccl:
        busy = [p for p in hccl if p in listening]
        span = f"{hccl[0]}-{hccl[-1]}" if len(hccl) > 1 else str(hccl[0])
        if busy:
            taken.append(f"HCCL port {', '.join(map(str, busy))} (of {span}; see HCCL_IF_BASE_PORT)")
        else:
            free.append(f"HCCL ports {span}")
    if taken:
        return Check("port", "fail", "already in use: " + ", ".join(taken))
    if not free:
        return Check("port", "skip", "not the master")
    return Check("port", "ok", ", ".join(free) + " free")


def check_host(cluster: Cluster, host: HostPlan, *, check_port: bool = True) -> HostReport:
    plan = cluster.plan
    t: Transport = cluster.transport(host)
    rt = cluster.runtime(host)
    needs = host_needs(host)
    report = HostReport(host.name, host.node_rank, npus=host.npus or needs.npu_indices)
    is_master = check_port and host.is_master
    wants_ports = is_master or (check_port and bool(host.npus))
    nic_for = host.address if host.detect_nic else ""
    try:
        probe = t.run(["sh", "-c", probe_script(rt.probe_image_script), "sh", plan.image_ref, "1" if wants_ports else "0", nic_for,
                       *needs.devices, *needs.mounts], timeout=60)
    except DeployError as e:
        report.add("ssh", "fail", reason_for(e, host.name))
        return report
    report.add("ssh", "ok", t.login)
    sec = parse_probe(probe.stdout)

    image = rt.judge_image_probe(*split_rc(sec.get("image", [])))
    if not image.engine_ok:
        report.add("engine", "fail", f"docker engine not reachable: {image.detail or 'no answer'}")
        return report
    report.add("engine", "ok", "answers")
    if image.image_id is not None:
        report.add("image", "ok", image.image_id)
    else:
        report.add("image", "warn", f"{plan.image_ref} not present; `up` delivers it")

    missing = sec.get("paths", [])
    if missing:
        report.add("devices", "fail", "missing on host: " + ", ".join(missing))
    else:
        report.add("devices", "ok", f"{len(needs.devices)} devices, {len(needs.mounts)} mounts")

    tools = set(sec.get("tools", []))
    npu = check_npus(t, has_npu_smi="npu-smi" in tools, has_hccn_tool="hccn_tool" in tools,
                     npus=report.npus, ascend=plan.flavor == "ascend")
    report.checks.extend(npu.checks)
    report.device_ips = npu.device_ips

    if wants_ports:
        report.checks.append(_port_check(host, _listening_ports("\n".join(sec.get("tcp", []))),
                                         plan.master_port if is_master else None))
    else:
        report.add("port", "skip", "not the master")

    if nic_for:
        report.nic = interface_for(host.address, sec.get("resolve", []), sec.get("addr", []))
        if report.nic is None:
            report.add("nic", "fail", f"no interface holds {host.address} (`ip -o addr`); set the host's `nic`")
        else:
            report.add("nic", "ok", f"{report.nic} carries {host.address} (detected)")

    free = _df_free_gib("\n".join(sec.get("df", [])))
    if not free:
        report.add("disk", "warn", "df reported nothing for the job's mounts or the engine's data root")
    else:
        where, gib = min(free.items(), key=lambda kv: kv[1])
        level: Level = "fail" if gib < MIN_FREE_GIB else "warn" if gib < WARN_FREE_GIB else "ok"
        report.add("disk", level, f"{gib:.1f} GiB free on {where}")
    return report


def preflight(cluster: Cluster, *, check_port: bool = True, deep: bool = False) -> list[HostReport]:
    """Every host's checks; `deep` adds doctor in a container of the job's image per host."""
    outcomes = for_each(cluster.hosts, lambda h: check_host(cluster, h, check_port=check_port),
                        key=lambda h: h.name)
    reports = []
    for host in cluster.hosts:
        o = outcomes[host.name]
        if o.value is not None:
            reports.append(o.value)
        else:  # a check itself broke (e.g. the host vanished mid-way): report, don't crash
            r = HostReport(host.name, host.node_rank)
            r.add("ssh", "fail", reason_for(o.error, host.name))
            reports.append(r)
    if len(reports) > 1:
        check_npu_network(cluster, reports)
        if check_port:
            check_master_reachable(cluster, reports)
    if deep:
        check_image_versions(cluster, reports)
    return reports


def failure_message(reports: list[HostReport]) -> str | None:
    bad = [(r.host, c) for r in reports for c in r.failures]
    if not bad:
        return None
    first = "; ".join(f"{h}: {c.name}: {c.detail}" for h, c in bad[:3])
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    return f"preflight failed on {len({h for h, _ in bad})} host(s): {first}{more}"


def check_npu_network(cluster: Cluster, reports: list[HostReport]) -> None:
    """Cluster-wide: device IPs unique, then every used NPU pings its peers (one round trip per host)."""
    by_host = {r.host: r for r in reports}
    for host, lines in duplicate_ips({r.host: r.device_ips for r in reports}).items():
        own = by_host[host].get("devip")  # keep what the host's own check found wrong
        earlier = [own.detail] if own is not None and own.level == "fail" else []
        by_host[host].replace(Check("devip", "fail", "; ".join(earlier + lines)))
    ready = {r.host: r for r in reports if r.device_ips and r.get("devip") is not None}
    if len(ready) < 2:
        return
    npus = {h: r.npus for h, r in ready.items()}
    ips = {h: r.device_ips for h, r in ready.items()}
    targets = {h: ping_targets(h, npus, ips) for h in ready}
    outcomes = for_each([cluster.host(h) for h in ready], lambda hp: run_pings(cluster.transport(hp), targets[hp.name]),
                        key=lambda hp: hp.name)
    for h, r in ready.items():
        o = outcomes[h]
        if o.value is None:
            r.replace(Check("ping", "fail", f"could not ping: {o.error}"))
            continue
        r.pings = o.value
        r.replace(judge_pings(h, r.device_ips, o.value))
