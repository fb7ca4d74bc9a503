"""Preflight: is every host ready to run its part of the plan? Checked in parallel, per host.

A host fails on the first thing that would make `up` fail later (no SSH, no engine, a device
or mount missing, unhealthy NPUs, the master port taken, no disk), so the operator learns it
in seconds instead of after an image transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.npu_health import check_npus
from q7x2_deploy.executor.probe import Check, Level, parse_probe, split_rc
from q7x2_deploy.plan import HostPlan
from q7x2_deploy.transport import Transport

CHECK_NAMES = ("ssh", "engine", "image", "devices", "npu", "links", "port", "disk")
MIN_FREE_GIB = 2.0  # below this, image delivery or a checkpoint save will fail
WARN_FREE_GIB = 20.0

# One round trip per host gathers everything but the NPU tools: the engine, the image, which
# paths exist, which tools are installed, listening ports and free space. Everything from the
# inventory arrives as positional parameters ($1 the image, $2 whether to list listening
# ports, then the paths), never as text. On a busy cluster every process the probe starts is
# paid on every host, so it starts few: one docker CLI call answers both "does the engine
# answer?" and "is the image there?" (`docker info`, the obvious engine probe, is the slowest
# docker command); the port table is read on the master only (the kernel walks every socket
# of the machine to produce it); one df covers every directory.
_PROBE_SCRIPT = r"""
img=$1; want_ports=$2; shift 2
echo "@image"; docker image inspect --format '{{.Id}}' "$img" 2>&1; echo "@rc $?"
echo "@paths"; for p in "$@"; do [ -e "$p" ] || echo "$p"; done
echo "@tools"; for t in npu-smi hccn_tool; do command -v "$t" >/dev/null 2>&1 && echo "$t"; done
echo "@tcp"; [ "$want_ports" = 1 ] && cat /proc/net/tcp /proc/net/tcp6 2>/dev/null
echo "@df"; n=$#; for p in "$@" /var/lib/docker; do [ -d "$p" ] && set -- "$@" "$p"; done; shift "$n"
[ "$#" -gt 0 ] && df -Pk -- "$@" 2>/dev/null
echo "@end"
"""


@dataclass
class HostReport:
    host: str
    rank: int
    checks: list[Check] = field(default_factory=list)
    npus: list[int] = field(default_factory=list)  # the NPUs the job's ranks run on here

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
    """What a host's containers use from the host, read back from the plan's docker run argv."""

    devices: list[str]
    mounts: list[str]
    npu_indices: list[int]


def host_needs(host: HostPlan) -> HostNeeds:
    argv = host.docker_run
    job_dir = str(PurePosixPath(host.job_file).parent)
    devices: list[str] = []
    mounts: list[str] = []
    for flag, value in zip(argv, argv[1:]):
        if flag == "--device":
            devices.append(value.split(":", 1)[0])
        elif flag in ("-v", "--volume"):
            src = value.split(":", 1)[0]
            if src != job_dir and src.startswith("/"):  # the job dir is created by `up`
                mounts.append(src)
    npus = [int(d.removeprefix("/dev/davinci")) for d in devices
            if d.removeprefix("/dev/davinci").isdigit()]
    return HostNeeds(devices, mounts, npus)


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


def check_host(cluster: Cluster, host: HostPlan, *, check_port: bool = True) -> HostReport:
    plan = cluster.plan
    t: Transport = cluster.transport(host)
    needs = host_needs(host)
    report = HostReport(host.name, host.node_rank, npus=host.npus or needs.npu_indices)
    wants_port = check_port and host.name == cluster.master.name
    try:
        probe = t.run(["sh", "-c", _PROBE_SCRIPT, "sh", plan.image_ref, "1" if wants_port else "0",
                       *needs.devices, *needs.mounts], timeout=60)
    except DeployError as e:
        report.add("ssh", "fail", str(e).removeprefix(f"{host.name}: "))
        return report
    report.add("ssh", "ok", f"{host.ssh.get('user', 'root')}@{host.address}")
    sec = parse_probe(probe.stdout)

    rc, image = split_rc(sec.get("image", []))
    answer = " ".join(image)
    if rc == 0 and image:
        report.add("engine", "ok", "answers")
        report.add("image", "ok", image[0].strip())
    elif "No such image" in answer or "no such image" in answer:
        report.add("engine", "ok", "answers")
        report.add("image", "warn", f"{plan.image_ref} not present; `up` delivers it")
    else:
        report.add("engine", "fail", f"docker engine not reachable: {answer[-200:] or 'no answer'}")
        return report

    missing = sec.get("paths", [])
    if missing:
        report.add("devices", "fail", "missing on host: " + ", ".join(missing))
    else:
        report.add("devices", "ok", f"{len(needs.devices)} devices, {len(needs.mounts)} mounts")

    tools = set(sec.get("tools", []))
    report.checks.extend(check_npus(t, has_npu_smi="npu-smi" in tools, has_hccn_tool="hccn_tool" in tools,
                                    npus=report.npus, ascend=plan.flavor == "ascend"))

    if wants_port:
        if plan.master_port in _listening_ports("\n".join(sec.get("tcp", []))):
            report.add("port", "fail", f"master port {plan.master_port} already in use")
        else:
            report.add("port", "ok", f"{plan.master_port} free")
    else:
        report.add("port", "skip", "not the master")

    free = _df_free_gib("\n".join(sec.get("df", [])))
    if not free:
        report.add("disk", "warn", "df reported nothing for the job's mounts or the engine's data root")
    else:
        where, gib = min(free.items(), key=lambda kv: kv[1])
        level: Level = "fail" if gib < MIN_FREE_GIB else "warn" if gib < WARN_FREE_GIB else "ok"
        report.add("disk", level, f"{gib:.1f} GiB free on {where}")
    return report


def preflight(cluster: Cluster, *, check_port: bool = True) -> list[HostReport]:
    outcomes = for_each(cluster.hosts, lambda h: check_host(cluster, h, check_port=check_port),
                        key=lambda h: h.name)
    reports = []
    for host in cluster.hosts:
        o = outcomes[host.name]
        if o.value is not None:
            reports.append(o.value)
        else:  # a check itself broke (e.g. the host vanished mid-way): report, don't crash
            r = HostReport(host.name, host.node_rank)
            r.add("ssh", "fail", str(o.error).removeprefix(f"{host.name}: "))
            reports.append(r)
    return reports


def failure_message(reports: list[HostReport]) -> str | None:
    bad = [(r.host, c) for r in reports for c in r.failures]
    if not bad:
        return None
    first = "; ".join(f"{h}: {c.name}: {c.detail}" for h, c in bad[:3])
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    return f"preflight failed on {len({h for h, _ in bad})} host(s): {first}{more}"
