"""One sandbox host: its files, its PID 1 (hostinit.py), readiness and power."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import docker

from q7x2_runtime.errors import UserError
from q7x2_runtime.waiting import poll

from q7x2_deploy.sandbox import ascend
from q7x2_deploy.sandbox import slurm as slurm_setup
from q7x2_deploy.sandbox.config import HostNames, SandboxConfig
from q7x2_deploy.sandbox.network import connect_inside, netns_path
from q7x2_deploy.sandbox.overlay import overlay_dirs
from q7x2_deploy.sandbox.ssh_keys import ensure_keypair
from q7x2_deploy.sandbox.state import HostState
from q7x2_deploy.sandbox.sysutil import children, kill_and_wait, pid_matches, pids_in_pidns_of, which

HOSTINIT = Path(__file__).with_name("hostinit.py")
# Mountpoints the host binds over; they must exist on the machine (created if absent).
MOUNTPOINTS = ("/data", "/shared", "/var/lib/docker", "/var/lib/q7x2")
# Per-host private directories (source under the host's dir -> path on the host). Real hosts
# do not share /tmp or /var/lib; sharing them here could hide deployer bugs.
PRIVATE_DIRS = {"docker": "/var/lib/docker", "data": "/data", "tmp": "/tmp", "var-lib-q7x2": "/var/lib/q7x2"}
# Copy-on-write per host: the machine's files show through (tools installed under /root such
# as a pyenv interpreter keep working), what a host writes stays on that host.
PRIVATE_OVERLAYS = ("/root",)


def _fresh_shell_files(overlays: list[tuple[str, Path, Path]]) -> None:
    """A freshly installed host's root shell start-up files, not this machine's.

    The machine's ~/.bashrc may set up developer tools (pyenv, cargo) that cost a fifth of a
    CPU-second on every SSH command; a real cluster host runs Debian's defaults. Tools under
    /root still show through the overlay and stay usable by absolute path.
    """
    for target, upper, _work in overlays:
        if target != "/root":
            continue
        for name in (".bashrc", ".profile"):
            skel = Path("/etc/skel") / name
            if skel.is_file():
                shutil.copyfile(skel, upper / name)


def engine_socket(h: HostNames) -> Path:
    """The host engine's socket as seen from the root namespace (/var/run/docker.sock inside)."""
    return h.dir / "run" / "docker.sock"


def init_config_path(h: HostNames) -> Path:
    return h.dir / "init.json"


def _sshd_config(cfg: SandboxConfig, h: HostNames) -> str:
    return f"""# sshd of sandbox host {h.name}
Port 22
ListenAddress 0.0.0.0
HostKey {h.dir}/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile {cfg.keys_dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
AcceptEnv LANG LC_*
MaxStartups 64:30:128
MaxSessions 64
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def _daemon_json(cfg: SandboxConfig, h: HostNames) -> dict:
    # Paths are as the host sees them: /run and /var/lib/docker are the host's own binds.
    return {
        "hosts": ["unix:///run/docker.sock"],
        "data-root": "/var/lib/docker",
        "exec-root": "/run/docker",
        "pidfile": "/run/docker.pid",
        "containerd-namespace": h.netns,
        "containerd-plugins-namespace": f"{h.netns}-plugins",
        "cgroup-parent": h.cgroup_parent,
        "storage-driver": "overlay2",
        # The sandbox network is the namespace's own eth0; containers use --network host.
        "bridge": "none",
        "iptables": False,
        "ip-forward": False,
        "ip-masq": False,
    }


def hosts_file(cfg: SandboxConfig, count: int, bastion: bool = False) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if bastion:
        lines.append(f"{cfg.bastion().address}\t{cfg.bastion().name}")
    lines += [f"{cfg.host(i).address}\t{cfg.host(i).name}" for i in range(1, count + 1)]
    return "\n".join(lines) + "\n"


def write_hosts_files(cfg: SandboxConfig, count: int, bastion: bool = False) -> None:
    """Rewrite every host's /etc/hosts in place (the bind mount follows the inode)."""
    text = hosts_file(cfg, count, bastion)
    for h in [cfg.host(i) for i in range(1, count + 1)] + ([cfg.bastion()] if bastion else []):
        p = h.dir / "etc" / "hosts"
        if p.exists():
            with open(p, "r+", encoding="ascii") as f:
                f.seek(0)
                f.write(text)
                f.truncate()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="ascii")


def prepare(cfg: SandboxConfig, h: HostNames, ascend_devices: int, slurm: bool = False, engine: bool = True) -> str:
    """Write the host's files (idempotent); return its public host key line. With `slurm` the
    host also runs munged and slurmd, and the first host slurmctld (sandbox/slurm.py).
    engine=False: a host with sshd alone (the bastion)."""
    for sub in ("run", "etc", "devstage", "log", *PRIVATE_DIRS):
        (h.dir / sub).mkdir(parents=True, exist_ok=True)
    (h.dir / "tmp").chmod(0o1777)
    pub = ensure_keypair(h.dir / "ssh_host_ed25519_key", f"root@{h.name}")
    (h.dir / "sshd_config").write_text(_sshd_config(cfg, h), encoding="ascii")
    (h.dir / "daemon.json").write_text(json.dumps(_daemon_json(cfg, h), indent=2) + "\n", encoding="ascii")
    (h.dir / "etc" / "hostname").write_text(h.name + "\n", encoding="ascii")
    overlays = [overlay_dirs(h.dir, t) for t in PRIVATE_OVERLAYS]
    _fresh_shell_files(overlays)
    overlays += ascend.overlay_uppers(h.dir, ascend_devices, h.index) if ascend_devices > 0 else []
    init = {
        "hostname": h.name,
        "run_dir": str(h.dir / "run"),
        "detach": ["/run/netns", "/run/docker", "/run/containerd", "/var/run/docker",
                   "/var/lib/docker", str(cfg.root)],
        "binds": [
            *[[str(h.dir / src), dst] for src, dst in PRIVATE_DIRS.items()],
            [str(cfg.shared_dir), "/shared"],
            [str(h.dir / "etc" / "hosts"), "/etc/hosts"],
            [str(h.dir / "etc" / "hostname"), "/etc/hostname"],
            *(slurm_setup.binds(cfg) if slurm else []),
        ],
        "overlays": [[t, str(u), str(w)] for t, u, w in overlays],
        "dev_stage": str(h.dir / "devstage"),
        "devices": ascend.device_nodes(ascend_devices),
        "daemons": [
            {"argv": [which("sshd") or "/usr/sbin/sshd", "-D", "-f", str(h.dir / "sshd_config"),
                      "-E", str(h.dir / "log" / "sshd.log")],
             "log": str(h.dir / "log" / "sshd.out")},
            *([{"argv": [which("dockerd") or "/usr/bin/dockerd", "--config-file", str(h.dir / "daemon.json")],
                "log": str(h.dir / "log" / "dockerd.log")}] if engine else []),
            *(slurm_setup.daemons(cfg, h, controller=h.index == 1) if slurm else []),
        ],
    }
    init_config_path(h).write_text(json.dumps(init, indent=2) + "\n", encoding="utf-8")
    return pub


def _wipe(path: Path) -> None:
    """Empty a directory: the host's /run starts clean at every boot, like a tmpfs."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def running(h: HostNames, hs: HostState) -> bool:
    return pid_matches(hs.init_pid, str(init_config_path(h)))


def start(cfg: SandboxConfig, h: HostNames, hs: HostState) -> None:
    """Boot the host: a fresh PID/mount/UTS/IPC namespace inside its network namespace."""
    if running(h, hs):
        return
    _wipe(h.dir / "run")
    log = open(h.dir / "log" / "init.log", "ab")
    argv = [which("nsenter") or "nsenter", f"--net={netns_path(h.netns)}", "--",
            which("unshare") or "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--mount-proc",
            "--propagation", "private", "--",
            sys.executable, "-I", str(HOSTINIT), str(init_config_path(h))]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    def booted() -> int | str | None:
        kids = children(proc.pid)
        return kids[0] if kids else ("exited" if proc.poll() is not None else None)

    init_pid = poll(booted, timeout_s=10, interval_s=0.02)
    if not isinstance(init_pid, int):
        raise UserError(f"host {h.name} did not boot; see {h.dir / 'log' / 'init.log'}")
    hs.launcher_pid, hs.init_pid, hs.stopped = proc.pid, init_pid, False


def power_off(h: HostNames, hs: HostState) -> None:
    """Kill the host's PID 1: the kernel kills everything on the host, mounts vanish."""
    if running(h, hs):
        pids = pids_in_pidns_of(hs.init_pid)  # type: ignore[arg-type]
        kill_and_wait([hs.init_pid, *pids])  # type: ignore[list-item]
    if hs.launcher_pid and pid_matches(hs.launcher_pid, str(init_config_path(h))):
        kill_and_wait([hs.launcher_pid])
    hs.init_pid = hs.launcher_pid = None


def sshd_answers(address: str, timeout: float = 1.0, inside: str | None = None) -> bool:
    """sshd greets on port 22; `inside`: probed from that network namespace (a host behind the
    bastion refuses the machine's own connections)."""
    try:
        conn = connect_inside(inside, address, 22, timeout) if inside else socket.create_connection((address, 22), timeout=timeout)
        with conn as s:
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def engine_answers(h: HostNames, timeout: float = 2.0) -> bool:
    sock = engine_socket(h)
    if not sock.exists():
        return False
    try:
        client = docker.DockerClient(base_url=f"unix://{sock}", timeout=max(1, round(timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "not answering"
        return False


def wait_ready(h: HostNames, hs: HostState, timeout: float = 60, *, engine: bool = True, hidden: bool = False) -> None:
    """Wait until sshd (unless the cable is cut: unreachable by design) and the engine answer.
    hidden: sshd is probed from inside the host (it refuses the machine's connections)."""
    ssh_ok, engine_ok = hs.cut, not engine

    def answering() -> str:
        nonlocal ssh_ok, engine_ok
        ssh_ok = ssh_ok or sshd_answers(h.address, inside=h.netns if hidden else None)
        engine_ok = engine_ok or engine_answers(h)
        return "ready" if ssh_ok and engine_ok else ("down" if not running(h, hs) else "")

    if poll(answering, timeout_s=timeout, interval_s=0.2) == "ready":
        return
    what = [n for n, ok in (("sshd", ssh_ok), ("dockerd", engine_ok)) if not ok]
    raise UserError(f"host {h.name}: {' and '.join(what)} not answering; see {h.dir / 'log'}")
