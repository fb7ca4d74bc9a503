"""A real Slurm cluster on the sandbox hosts: munged and slurmd on every host, slurmctld on the
first (which is also the login host sbatch runs on).

Debian's slurm-wlm and munge, installed with apt when missing. Each host already has its own
network, UTS, mount and PID namespaces, so the daemons run there as on real hosts: the host's
PID 1 (hostinit.py) starts them in the foreground, the host's hostname is its NodeName, its
/etc/hosts names every node, its private /run holds their sockets, spool, state and pid files
(no pid file is ever shared: a second slurmd would SIGTERM the pid it finds there), and the
cluster's configuration is bound over /etc/slurm, where sbatch and slurmd look for it. Powering
a host off (`sandbox down`, `sandbox stop`) ends its daemons with everything else on it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from q7x2_runtime.errors import UserError

from q7x2_deploy.sandbox.config import HostNames, SandboxConfig
from q7x2_deploy.sandbox.sysutil import which

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "squeue", "sacct", "scancel", "scontrol", "sinfo")
PARTITION = "sandbox"
# Inside every host (its own /run): munged's socket and the daemons' spool, state and pid files.
MUNGE_SOCKET = "/run/munge/munge.socket.2"
RUN_DIR = "/run/slurm"


def etc_dir(cfg: SandboxConfig) -> Path:
    """The cluster's configuration on the machine; every host sees it as /etc/slurm."""
    return cfg.state_dir / "slurm" / "etc"


def key_file(cfg: SandboxConfig) -> Path:
    return cfg.state_dir / "slurm" / "munge.key"


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if which(b) is None]


def ensure_installed(log) -> float | None:  # noqa: ANN001 - the sandbox's log callable
    """apt-get install the packages when a binary is missing; the seconds it took, or None.

    Debian's image ships /usr/sbin/policy-rc.d (exit 101), so the packages' scripts start no
    munged or slurmd of their own: there is no systemd here to own them.
    """
    if not missing_binaries():
        return None
    if shutil.which("apt-get") is None:
        raise UserError(f"Slurm is not installed ({', '.join(missing_binaries())} missing) and there is no apt-get: "
                        f"install {' '.join(PACKAGES)}")
    log(f"installing {' '.join(PACKAGES)} (apt-get, --no-install-recommends)")
    t0 = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:  # a stale package index: refresh it once
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0 or missing_binaries():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"apt-get install {' '.join(PACKAGES)} failed: {tail[0]}")
    return time.monotonic() - t0


def _hardware() -> dict[str, int]:
    """CPUs, sockets, cores, threads and memory as slurmd detects them: a node configured with
    more than it has is drained ("Low RealMemory", "Low socket*core count")."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    hw = {k: int(v) for k, v in re.findall(r"(\w+)=([0-9]+)", out)}
    # Every host shares the machine's memory: give each a quarter, at most 4 GiB.
    hw["RealMemory"] = max(256, min(4096, hw.get("RealMemory", 1024) // 4))
    return hw


def slurm_conf(cfg: SandboxConfig, nodes: list[HostNames], npus: int) -> str:
    hw = _hardware()
    ctl = nodes[0]
    gres = f" Gres=gpu:npu:{npus}" if npus else ""
    lines = [
        f"# Slurm of sandbox {cfg.name!r}; written by `q7x2-deploy sandbox up --slurm`, removed by `sandbox down`.",
        f"ClusterName=q7x2{cfg.name}",
        f"SlurmctldHost={ctl.name}({ctl.address})",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={MUNGE_SOCKET}",
        "SlurmctldPort=6817", "SlurmdPort=6818",
        f"StateSaveLocation={RUN_DIR}/state",
        f"SlurmdSpoolDir={RUN_DIR}/spool",
        f"SlurmctldPidFile={RUN_DIR}/slurmctld.pid", f"SlurmdPidFile={RUN_DIR}/slurmd.pid",
        f"SlurmctldLogFile={RUN_DIR}/slurmctld.log", f"SlurmdLogFile={RUN_DIR}/slurmd.log",
        "SlurmctldDebug=info", "SlurmdDebug=info",
        # linuxproc: no cgroup delegation needed; containers are not Slurm's processes either way,
        # which is why the job labels them and `down` sweeps them.
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
        "ReturnToService=2", "SlurmdTimeout=60", "InactiveLimit=0", "KillWait=5", "MinJobAge=600",
        *(["GresTypes=gpu"] if npus else []),
        f"NodeName=DEFAULT CPUs={hw['CPUs']} Boards=1 SocketsPerBoard={hw.get('SocketsPerBoard', 1)} "
        f"CoresPerSocket={hw.get('CoresPerSocket', 1)} ThreadsPerCore={hw.get('ThreadsPerCore', 1)} "
        f"RealMemory={hw['RealMemory']}{gres} State=UNKNOWN",
        *[f"NodeName={h.name} NodeAddr={h.address}" for h in nodes],
        f"PartitionName={PARTITION} Nodes={','.join(h.name for h in nodes)} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def write_config(cfg: SandboxConfig, nodes: list[HostNames], npus: int) -> None:
    etc = etc_dir(cfg)
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "slurm.conf").write_text(slurm_conf(cfg, nodes, npus), encoding="ascii")
    # NPUs declared as GPUs of Type=npu: each step gets SLURM_STEP_GPUS, the sandbox's davinciN.
    (etc / "gres.conf").write_text(f"Name=gpu Type=npu File=/dev/davinci[0-{npus - 1}]\n" if npus else "", encoding="ascii")
    key = key_file(cfg)
    if not key.exists():
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(1024))
    for d in (cfg.state_dir, cfg.state_dir / "slurm", etc):
        d.chmod(0o755)  # munged and slurmd check that every component is reachable


def daemons(cfg: SandboxConfig, h: HostNames, controller: bool) -> list[dict]:
    """The host's Slurm daemons for its PID 1, each in the foreground (so the host owns it)."""
    log = h.dir / "log"
    munged = (f"mkdir -p /run/munge && chmod 755 /run /run/munge && exec munged -F --socket={MUNGE_SOCKET} "
              f"--key-file={key_file(cfg)} --pid-file=/run/munge/munged.pid --log-file=/run/munge/munged.log "
              "--seed-file=/run/munge/munged.seed")
    # slurmd/slurmctld need munged's socket at start: wait for it (a fresh host starts all at once).
    wait = f"i=0; while [ ! -S {MUNGE_SOCKET} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; mkdir -p {RUN_DIR}/spool {RUN_DIR}/state"
    out = [{"argv": ["/bin/sh", "-c", munged], "log": str(log / "munged.out")}]
    if controller:
        out.append({"argv": ["/bin/sh", "-c", f"{wait} && exec slurmctld -D -f /etc/slurm/slurm.conf"], "log": str(log / "slurmctld.out")})
    out.append({"argv": ["/bin/sh", "-c", f"{wait} && exec slurmd -D -N {h.name} -f /etc/slurm/slurm.conf"], "log": str(log / "slurmd.out")})
    return out


def binds(cfg: SandboxConfig) -> list[list[str]]:
    return [[str(etc_dir(cfg)), "/etc/slurm"]]


def host_exec(init_pid: int, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command as the host whose PID 1 is init_pid (its network, mount, UTS and PID view)."""
    return subprocess.run(["nsenter", "-t", str(init_pid), "-n", "-m", "-u", "-i", "-p", "--", *argv],
                          capture_output=True, text=True, timeout=timeout)


def wait_idle(init_pid: int, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = host_exec(init_pid, ["sinfo", "-h", "-N", "-o", "%N %t"])
        last = (r.stdout or r.stderr).strip()
        states = [line.split()[1] for line in last.splitlines() if len(line.split()) == 2]
        if len(states) >= count and all(s == "idle" for s in states):
            return
        time.sleep(0.3)
    raise UserError(f"Slurm nodes not idle after {timeout:.0f} s (sinfo: {last or 'no answer'}); "
                    f"see {RUN_DIR}/slurmctld.log and slurmd.log under the hosts' run directories")
