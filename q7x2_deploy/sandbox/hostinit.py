"""PID 1 of a sandbox host: builds the host's filesystem view, then runs sshd and dockerd.

Started (by hosts.py) as
    nsenter --net=/run/netns/NS -- unshare --mount --uts --ipc --pid --fork --mount-proc
        --propagation private -- python3 -I hostinit.py CONFIG.json
so everything here happens inside the host's own namespaces and nothing leaks to the
machine. It imports nothing from the project: it must run under any python3.

Killing this process is a power cut: the kernel kills every process of the PID namespace
(sshd, dockerd, containerd, containers) and the mount namespace with all its mounts vanishes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def mountpoints() -> list[str]:
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            out.append(line.split()[4].replace("\\040", " "))
    return out


def detach_inherited(prefixes: list[str]) -> None:
    """Drop copies of the machine's mounts the host must not hold (other hosts' namespaces,
    the root engine's container filesystems): deepest first, lazily."""
    for mp in sorted(mountpoints(), key=len, reverse=True):
        if any(mp == p or mp.startswith(p.rstrip("/") + "/") for p in prefixes):
            subprocess.run(["umount", "-l", mp], check=False, stderr=subprocess.DEVNULL)


def build_dev(stage: str, devices: list[list]) -> None:
    """A /dev of the host's own: a copy of the machine's nodes plus simulated ones, on tmpfs."""
    sh("mount", "-t", "tmpfs", "-o", "mode=755,nosuid", "q7x2dev", stage)
    skip = {"pts", "shm", "mqueue", "hugepages", "ptmx"}

    def copy(src: str, dst: str) -> None:
        for e in os.scandir(src):
            if e.name in skip and src == "/dev":
                continue
            s, d = e.path, os.path.join(dst, e.name)
            try:
                st = os.lstat(s)
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(s), d)
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    os.mknod(d, st.st_mode, st.st_rdev)
                    os.chown(d, st.st_uid, st.st_gid)
                elif stat.S_ISDIR(st.st_mode) and not os.path.ismount(s):
                    os.mkdir(d, stat.S_IMODE(st.st_mode))
                    copy(s, d)
            except OSError:
                continue

    copy("/dev", stage)
    for name, major, minor, mode in devices:
        path = os.path.join(stage, name)
        os.mknod(path, 0o020000 | mode, os.makedev(major, minor))
        os.chmod(path, mode)
    for d in ("pts", "shm", "mqueue"):
        os.makedirs(os.path.join(stage, d), exist_ok=True)
    os.symlink("pts/ptmx", os.path.join(stage, "ptmx"))
    sh("mount", "--move", stage, "/dev")
    sh("mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=620,gid=5", "devpts", "/dev/pts")
    sh("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm", "/dev/shm")
    subprocess.run(["mount", "-t", "mqueue", "mqueue", "/dev/mqueue"], check=False)


def main() -> int:
    cfg = json.load(open(sys.argv[1], encoding="utf-8"))
    detach_inherited(cfg["detach"])
    # The host's /run: its engine's socket, exec root and pid files, sshd's pid file.
    sh("mount", "--bind", cfg["run_dir"], "/run")
    for sub in ("sshd", "lock"):
        os.makedirs(f"/run/{sub}", exist_ok=True)
    # Overlays first: a bind such as /etc/hosts must land on top of an overlay of /etc.
    for target, upper, work in cfg["overlays"]:
        sh("mount", "-t", "overlay", "q7x2ovl", "-o", f"lowerdir={target},upperdir={upper},workdir={work}", target)
    for src, dst in cfg["binds"]:
        if not os.path.exists(dst):  # e.g. no /etc/hostname: never create files on the machine
            print(f"hostinit: {dst} does not exist; not binding {src}", file=sys.stderr)
            continue
        sh("mount", "--bind", src, dst)
    build_dev(cfg["dev_stage"], cfg["devices"])
    socket.sethostname(cfg["hostname"])
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "HOME": "/root", "LANG": "C.UTF-8"})
    os.chdir("/")

    for d in cfg["daemons"]:
        log = open(d["log"], "ab", buffering=0)
        subprocess.Popen(d["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()

    # PID 1 must reap every orphan the daemons leave (shims, sshd sessions).
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
