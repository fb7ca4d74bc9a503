"""Simulated Ascend device nodes, driver files and NPU network for one sandbox host.

Nodes are clones of /dev/null (char 1:3): `docker run --device /dev/davinci0` really works and
reading or writing them is harmless. The driver tree and /etc/hccn.conf are placed with
overlays in the host's own mount namespace only; the machine's /dev, /usr and /etc stay
untouched. Each NPU's device IP is DEVICE_NET.<host index>.<NPU + 1> (a benchmarking range:
the stand-in never sends a packet, it answers `-ping` itself).
"""

from __future__ import annotations

from pathlib import Path

from q7x2_deploy.sandbox.overlay import overlay_dirs

NULL_MAJOR, NULL_MINOR = 1, 3
# Paths the ascend flavor mounts into its containers; the overlay parents that hold them.
OVERLAY_TARGETS = ("/usr/local", "/usr/bin", "/var/log", "/etc")
DEVICE_NET = "198.18"  # 198.18.0.0/15: reserved for benchmarks, never routed anywhere


def device_nodes(count: int) -> list[list]:
    names = [f"davinci{i}" for i in range(count)] + ["davinci_manager", "devmm_svm", "hisi_hdc"]
    return [[n, NULL_MAJOR, NULL_MINOR, 0o666] for n in names] if count > 0 else []


# Drills: a line `health N Alarm` or `link N DOWN` in this host-local file makes the stand-ins
# report that NPU as unhealthy or its link as down; `ip N ADDR` gives NPU N the live address
# ADDR whatever /etc/hccn.conf says; `unreachable ADDR` makes every ping from this host to ADDR
# time out (the host's /run is its own). A duplicate IP is drilled by editing /etc/hccn.conf.
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
# Sandbox stand-in for hccn_tool -i N with -link -g, -ip -g or -ping -g address IP, printing what
# the real tool prints. Device IPs come from /etc/hccn.conf (as the driver sets them at boot).
faults={faults}
usage() {{ echo "hccn_tool (q7x2 sandbox): only -i N -link -g | -ip -g | -ping -g address IP [pkt N]" >&2; exit 2; }}
drill() {{ awk -v k="$1" -v i="$2" '$1 == k && $2 == i {{ print $3 }}' "$faults" 2>/dev/null; }}
[ "$1" = -i ] && [ -n "$2" ] || usage
i=$2
case "$3 $4" in
"-link -g")
  state=$(drill link "$i")
  echo "link status: ${{state:-UP}}" ;;
"-ip -g")
  ip=$(drill ip "$i")
  [ -n "$ip" ] || ip=$(sed -n "s/^address_$i=//p" /etc/hccn.conf 2>/dev/null)
  mask=$(sed -n "s/^netmask_$i=//p" /etc/hccn.conf 2>/dev/null)
  [ -n "$ip" ] || {{ echo "Cmd execute failed!"; exit 1; }}
  echo "ipaddr:$ip"
  echo "netmask:${{mask:-255.255.255.0}}" ;;
"-ping -g")
  [ "$5" = address ] && [ -n "$6" ] || usage
  target=$6
  echo "device $i PING $target"
  case "$target" in {net}.*) reach=1 ;; *) reach=0 ;; esac
  awk -v t="$target" '$1 == "unreachable" && $2 == t {{ found = 1 }} END {{ exit !found }}' "$faults" 2>/dev/null && reach=0
  for seq in 0 1 2; do
    if [ "$reach" = 1 ]; then echo "recv seq=$seq,time=0.0$((seq + 4))1000ms"; else echo "recv time out seq=$seq"; fi
  done
  if [ "$reach" = 1 ]; then echo "3 packets transmitted, 3 received, 0.00% packet loss"
  else echo "3 packets transmitted, 0 received, 100.00% packet loss"; fi ;;
*) usage ;;
esac
"""


def device_ip(host_index: int, npu: int) -> str:
    return f"{DEVICE_NET}.{host_index}.{npu + 1}"


def hccn_conf(host_index: int, count: int) -> str:
    """/etc/hccn.conf as Ascend hosts keep it: address_N, netmask_N, netdetect_N per NPU."""
    lines = []
    for i in range(count):
        lines += [f"address_{i}={device_ip(host_index, i)}", f"netmask_{i}=255.255.0.0",
                  f"netdetect_{i}={DEVICE_NET}.0.1"]
    return "\n".join(lines) + "\n"


def overlay_uppers(host_dir: Path, count: int, host_index: int = 1) -> list[tuple[str, Path, Path]]:
    """Write the per-host driver files; return (target, upper, work) for each overlay."""
    out = [overlay_dirs(host_dir, t) for t in OVERLAY_TARGETS]
    local, usrbin, varlog, etc = (u for _, u, _ in out)
    (etc / "hccn.conf").write_text(hccn_conf(host_index, count))
    for sub in ("driver/lib64", "driver/tools", "firmware", "add-ons"):
        (local / "Ascend" / sub).mkdir(parents=True, exist_ok=True)
    (local / "Ascend/driver/version.info").write_text("Version=23.0.0\nascendhal_version=7.35.19\n")
    (local / "Ascend/firmware/version.info").write_text("Version=7.1.0.3.220\n")
    (local / "sbin").mkdir(exist_ok=True)
    npu_smi = local / "sbin/npu-smi"
    npu_smi.write_text(_NPU_SMI.format(last=max(count - 1, 0), faults=FAULTS_FILE))
    npu_smi.chmod(0o755)
    hccn = usrbin / "hccn_tool"
    hccn.write_text(_HCCN_TOOL.format(faults=FAULTS_FILE, net=DEVICE_NET))
    hccn.chmod(0o755)
    slog = varlog / "npu/conf/slog"
    slog.mkdir(parents=True, exist_ok=True)
    (slog / "slog.conf").write_text("zip_switch=1\nglobal_level=3\n")
    return [(t, u, w) for t, u, w in out]
