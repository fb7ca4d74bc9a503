"""Simulated Ascend device nodes and driver files for one sandbox host.

Nodes are clones of /dev/null (char 1:3): `docker run --device /dev/davinci0` really works and
reading or writing them is harmless. The driver tree is placed with overlays in the host's own
mount namespace only; the machine's /dev and /usr stay untouched.
"""

from __future__ import annotations

from pathlib import Path

from q7x2_deploy.sandbox.overlay import overlay_dirs

NULL_MAJOR, NULL_MINOR = 1, 3
# Paths the ascend flavor mounts into its containers; the overlay parents that hold them.
OVERLAY_TARGETS = ("/usr/local", "/usr/bin", "/var/log")


def device_nodes(count: int) -> list[list]:
    names = [f"davinci{i}" for i in range(count)] + ["davinci_manager", "devmm_svm", "hisi_hdc"]
    return [[n, NULL_MAJOR, NULL_MINOR, 0o666] for n in names] if count > 0 else []


# Drills: a line `health N Alarm` or `link N DOWN` in this host-local file makes the stand-ins
# report that NPU as unhealthy or its link as down (the host's /run is its own).
FAULTS_FILE = "/run/q7x2-npu-faults"

_NPU_SMI = """#!/bin/sh
# Sandbox stand-in for `npu-smi info`: the simulated devices of this host, in npu-smi's table.
faults={faults}
[ "$1" = info ] || {{ echo "npu-smi (q7x2 sandbox): only 'info' is simulated" >&2; exit 2; }}
bar='+---------------------------+---------------+----------------------------------------------------+'
echo '+------------------------------------------------------------------------------------------------+'
echo '| npu-smi 23.0.0 (q7x2 sandbox, simulated)                                                       |'
echo "$bar"
echo '| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|'
echo '| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |'
for i in $(seq 0 {last}); do
  health=$(awk -v i="$i" '$1 == "health" && $2 == i {{ print $3 }}' "$faults" 2>/dev/null)
  printf '| %-5s %-19s | %-13s | %-10s  %-16s  %-21s|\\n' "$i" 910B "${{health:-OK}}" 0.0 0 "0    / 0"
  printf '| %-25s | %-13s | %-10s  %-16s  %-21s|\\n' 0 "0000:00:0$i.0" 0 "0    / 0" "0    / 65536"
  echo "$bar"
done
"""

_HCCN_TOOL = """#!/bin/sh
# Sandbox stand-in for `hccn_tool -i N -link -g`: a healthy link unless a drill says otherwise.
faults={faults}
[ "$1" = -i ] && [ "$3" = -link ] && [ "$4" = -g ] || {{ echo "hccn_tool (q7x2 sandbox): only -i N -link -g" >&2; exit 2; }}
state=$(awk -v i="$2" '$1 == "link" && $2 == i {{ print $3 }}' "$faults" 2>/dev/null)
echo "link status: ${{state:-UP}}"
"""


def overlay_uppers(host_dir: Path, count: int) -> list[tuple[str, Path, Path]]:
    """Write the per-host driver files; return (target, upper, work) for each overlay."""
    out = [overlay_dirs(host_dir, t) for t in OVERLAY_TARGETS]
    local, usrbin, varlog = (u for _, u, _ in out)
    for sub in ("driver/lib64", "driver/tools", "firmware", "add-ons"):
        (local / "Ascend" / sub).mkdir(parents=True, exist_ok=True)
    (local / "Ascend/driver/version.info").write_text("Version=23.0.0\nascendhal_version=7.35.19\n")
    (local / "Ascend/firmware/version.info").write_text("Version=7.1.0.3.220\n")
    (local / "sbin").mkdir(exist_ok=True)
    npu_smi = local / "sbin/npu-smi"
    npu_smi.write_text(_NPU_SMI.format(last=max(count - 1, 0), faults=FAULTS_FILE))
    npu_smi.chmod(0o755)
    hccn = usrbin / "hccn_tool"
    hccn.write_text(_HCCN_TOOL.format(faults=FAULTS_FILE))
    hccn.chmod(0o755)
    slog = varlog / "npu/conf/slog"
    slog.mkdir(parents=True, exist_ok=True)
    (slog / "slog.conf").write_text("zip_switch=1\nglobal_level=3\n")
    return [(t, u, w) for t, u, w in out]
