"""The sandbox's life cycle: up, down, status and fault injection."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import docker

from q7x2_runtime.errors import UserError

from q7x2_deploy.image import base_image
from q7x2_deploy.sandbox import hosts, inventory_file, network, registry, sample_data, ssh_config_file
from q7x2_deploy.sandbox import slurm as slurm_setup
from q7x2_deploy.sandbox.config import MAX_HOSTS, SandboxConfig
from q7x2_deploy.sandbox.ssh_keys import ensure_keypair, write_known_hosts
from q7x2_deploy.sandbox.state import HostState, State
from q7x2_deploy.sandbox.sysutil import (kill_and_wait, pid_matches, pids_in_netns, pids_in_pidns_of,
                                         require_binaries, require_root)

Log = Callable[[str], None]


@contextlib.contextmanager
def locked(cfg: SandboxConfig) -> Iterator[None]:
    """One sandbox command at a time per sandbox name."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    with open(cfg.root / f".{cfg.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _preflight() -> None:
    require_root()
    require_binaries()


def config_for(name: str, subnet: str | None) -> SandboxConfig:
    """The sandbox config; a sandbox that is already up keeps its subnet."""
    probe = SandboxConfig(name=name)
    st = State.load(probe.state_file)
    if st is not None:
        if subnet and subnet != st.subnet:
            raise UserError(f"sandbox {name!r} is up on {st.subnet}; run `sandbox down` before changing --subnet")
        return SandboxConfig(name=name, subnet=st.subnet)
    return SandboxConfig(name=name, subnet=subnet) if subnet else probe


# --- up --------------------------------------------------------------------------------------

def up(cfg: SandboxConfig, count: int, *, ascend_devices: int = 0, inventory: Path | None = None,
       npus_per_node: int = 1, with_base_image: bool = True, load_base_image: bool = False,
       with_sample: bool = True, slurm: bool = False, bastion: bool = False, log: Log = print) -> State:
    _preflight()
    if not 1 <= count <= MAX_HOSTS:
        raise UserError(f"host count must be 1..{MAX_HOSTS}, got {count}")
    if ascend_devices < 0 or ascend_devices > 64:
        raise UserError(f"--ascend-devices must be 0..64, got {ascend_devices}")
    t0 = time.monotonic()
    with locked(cfg):
        st = State.load(cfg.state_file) or State(name=cfg.name, subnet=cfg.subnet)
        if st.hosts and st.ascend_devices != ascend_devices:
            raise UserError(f"sandbox {cfg.name!r} is up with --ascend-devices {st.ascend_devices}; "
                            "run `sandbox down` first to change it")
        if st.hosts and (st.bastion is not None) != bastion:
            raise UserError(f"sandbox {cfg.name!r} is up {'with' if st.bastion else 'without'} --bastion; "
                            "run `sandbox down` first to change it")
        st.ascend_devices = ascend_devices
        if st.hosts and st.slurm != slurm:
            raise UserError(f"sandbox {cfg.name!r} is up {'with' if st.slurm else 'without'} Slurm; "
                            "run `sandbox down` first to change it")
        count = max(count, len(st.hosts))
        if slurm:
            took = slurm_setup.ensure_installed(log)
            if took is not None:
                log(f"installed {' '.join(slurm_setup.PACKAGES)} in {took:.1f} s")
            st.slurm = True
        if not st.bridge:
            network.check_subnet_free(cfg)
        st.save(cfg.state_file)

        for p in hosts.MOUNTPOINTS:  # the host binds over these; record what we had to create
            if not os.path.isdir(p):
                os.makedirs(p)
                st.created_dirs.append(p)
        cfg.shared_dir.mkdir(parents=True, exist_ok=True)
        cfg.shared_dir.chmod(0o755)

        st.bridge = True
        rule = network.forward_rule(cfg)
        if rule not in st.iptables_rules:
            st.iptables_rules.append(rule)
        st.save(cfg.state_file)
        network.ensure_bridge(cfg)
        network.ensure_iptables(rule)

        ca = registry.ensure_certs(cfg)
        trust, created = registry.install_trust(cfg, ca)
        st.certs_files = sorted({*st.certs_files, str(trust)})
        st.created_dirs += [str(p) for p in created if str(p) not in st.created_dirs]
        st.save(cfg.state_file)
        st.registry_pid = registry.start(cfg, st.registry_pid)
        st.save(cfg.state_file)

        pub = ensure_keypair(cfg.identity, f"q7x2-sandbox-{cfg.name}")
        (cfg.keys_dir / "authorized_keys").write_text(pub + "\n", encoding="ascii")

        names = [cfg.host(i) for i in range(1, count + 1)]
        host_keys = []
        for h in names:
            hs = st.host(h.index)
            st.save(cfg.state_file)
            network.ensure_host_link(cfg, h, plugged=not hs.cut)
            host_keys.append(([h.name, h.address], hosts.prepare(cfg, h, ascend_devices, slurm=slurm)))
        if bastion:
            jump = cfg.bastion()
            if st.bastion is None:
                st.bastion = HostState(index=0)
            st.save(cfg.state_file)
            network.ensure_host_link(cfg, jump)
            host_keys.append(([jump.name, jump.address], hosts.prepare(cfg, jump, 0, engine=False)))
            for h in names:  # from here on the machine reaches them only through the bastion
                network.hide_from_machine(cfg, h)
        hosts.write_hosts_files(cfg, count, bastion)
        if slurm:
            slurm_setup.write_config(cfg, names, ascend_devices)
        write_known_hosts(cfg.known_hosts, host_keys)

        booted = []
        for h in names:
            hs = st.host(h.index)
            if not hosts.running(h, hs):
                hosts.start(cfg, h, hs)
                booted.append(h)
            st.save(cfg.state_file)
        if bastion and st.bastion is not None and not hosts.running(cfg.bastion(), st.bastion):
            hosts.start(cfg, cfg.bastion(), st.bastion)
            st.save(cfg.state_file)
        with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
            list(pool.map(lambda h: hosts.wait_ready(h, st.host(h.index), hidden=bastion), names))
        if bastion and st.bastion is not None:
            hosts.wait_ready(cfg.bastion(), st.bastion, engine=False)
            ssh_config_file.write(cfg, count)
        log(f"{len(names)} hosts up ({len(booted)} booted){' behind ' + cfg.bastion().name if bastion else ''} "
            f"in {time.monotonic() - t0:.1f} s")
        if slurm:
            slurm_setup.wait_idle(st.host(1).init_pid or 0, count)
            log(f"Slurm up: slurmctld on {names[0].name}, {count} idle node(s) in partition "
                f"{slurm_setup.PARTITION!r} ({time.monotonic() - t0:.1f} s)")

        if with_base_image:
            st.base_image = base_image.ensure_base_image(log=log)
            st.save(cfg.state_file)
            if load_base_image:
                _load_into_hosts(cfg, names, st.base_image, log)
        if with_sample:
            sample_data.ensure_sample(cfg, [h.dir / "data" for h in names], log=log)

        inv = (inventory or Path("inventory.sandbox.yaml")).absolute()
        problem = inventory_file.write(inv, cfg, count, npus_per_node, slurm=slurm, bastion=bastion)
        st.inventory = str(inv)
        if st.inventory not in st.inventories:
            st.inventories.append(st.inventory)  # `down` removes every one it wrote
        st.save(cfg.state_file)
        log(f"inventory: {inv}")
        if problem:
            log(f"warning: the inventory does not validate yet: {problem}")
        log(f"sandbox {cfg.name!r} up with {count} hosts in {time.monotonic() - t0:.1f} s")
        return st


def _load_into_hosts(cfg: SandboxConfig, names: list, ref: str, log: Log) -> None:
    src = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=600)
    try:
        for h in names:
            dst = docker.DockerClient(base_url=f"unix://{hosts.engine_socket(h)}", timeout=600)
            try:
                try:
                    dst.images.get(ref)
                    continue
                except docker.errors.ImageNotFound:
                    pass
                log(f"loading {ref} into {h.name}")
                base_image.copy_image(src, dst, ref)
            finally:
                dst.close()
    finally:
        src.close()


# --- down ------------------------------------------------------------------------------------

def _other_sandboxes(cfg: SandboxConfig) -> bool:
    return any(Path(p).parent != cfg.state_dir for p in glob.glob(str(cfg.root / "*" / "state.json")))


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [l.split()[4] for l in f if l.split()[4].startswith(prefix) or l.split()[4] == str(path)]


def down(cfg: SandboxConfig, log: Log = print) -> None:
    """Remove everything the sandbox made; safe to run again and after a crash."""
    require_root()
    with locked(cfg):
        st = State.load(cfg.state_file)
        prefix = f"{cfg.name}-"
        # 1. power off every host: from the state, then anything left in our namespaces
        if st is not None:
            for hs in st.hosts:
                hosts.power_off(cfg.host(hs.index), hs)
            if st.bastion is not None:
                hosts.power_off(cfg.bastion(), st.bastion)
        for ns in network.list_netns(cfg):
            path = network.netns_path(ns)
            pids = pids_in_netns(path)
            # Processes of a host's own PID namespace (containers with their own network too);
            # pids_in_pidns_of never returns the machine's namespace.
            pids += [p for pid in pids for p in pids_in_pidns_of(pid)]
            kill_and_wait(sorted(set(pids) - {os.getpid()}))
        # 2. registry
        pid = st.registry_pid if st else None
        registry.stop(cfg, pid)
        marker = str(cfg.registry_dir / "config.yml")
        for entry in os.listdir("/proc"):
            if entry.isdigit() and pid_matches(int(entry), marker):
                kill_and_wait([int(entry)])
        # 3. network: cables, namespaces, bridge, firewall rule
        for ifname in network.list_links(cfg):
            network.run(["ip", "link", "del", ifname], check=False)
        for ns in network.list_netns(cfg):
            network.run(["ip", "netns", "del", ns], check=False)
        network.remove_bridge(cfg)
        for rule in (st.iptables_rules if st else []):
            network.remove_iptables(rule)
        network.sweep_iptables(cfg.iptables_comment)
        # 4. cgroups the host engines made for their containers
        for d in sorted(glob.glob(f"/sys/fs/cgroup/*/{prefix}sbx-[0-9]*"), reverse=True):
            for sub, _dirs, _files in sorted(os.walk(d, topdown=False), key=lambda x: -len(x[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(sub)
        # 5. files outside the state dir
        # Only files the state lists, or that hold our own CA: without a state the subnet (and so
        # the certs.d path) is unknown, and another sandbox may own the default one.
        for f in (st.certs_files if st else []):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(f))
        registry.sweep_trust(cfg)
        for inv in {*(st.inventories if st else []), *([st.inventory] if st and st.inventory else [])}:
            if inventory_file.is_ours(Path(inv)):
                os.unlink(inv)
        others = _other_sandboxes(cfg)
        for d in sorted(st.created_dirs if st else [], key=len, reverse=True):
            if d.startswith("/etc/") or not others:  # another sandbox may still bind over /data
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only if empty: never remove what someone put there since
        # 6. the state dir itself (never while anything is mounted below it)
        if cfg.state_dir.exists():
            left = _mounts_under(cfg.state_dir)
            if left:
                raise UserError(f"mounts remain under {cfg.state_dir} ({left[0]}); not removing it")
            shutil.rmtree(cfg.state_dir)
        log(f"sandbox {cfg.name!r} is down")


def purge(cfg: SandboxConfig, log: Log = print) -> None:
    """After `down`: also drop the base rootfs cache, and the sandbox root if nothing else is in it."""
    require_root()
    if _other_sandboxes(cfg):
        log("other sandboxes are up: keeping the shared cache")
        return
    shutil.rmtree(cfg.cache_dir, ignore_errors=True)
    for lock in cfg.root.glob(".*.lock"):
        lock.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        cfg.root.rmdir()
    log(f"removed the cache under {cfg.root}")


# --- status and faults ----------------------------------------------------------------------

def status(cfg: SandboxConfig) -> dict:
    st = State.load(cfg.state_file)
    if st is None:
        return {"name": cfg.name, "up": False, "hosts": []}
    out_hosts = []
    for hs in st.hosts:
        h = cfg.host(hs.index)
        out_hosts.append({
            "name": h.name, "address": h.address, "nic": h.nic, "netns": h.netns,
            "running": hosts.running(h, hs), "stopped": hs.stopped, "cut": hs.cut,
            "cable": network.cable_up(h),
            "sshd": hosts.sshd_answers(h.address, timeout=0.5, inside=h.netns if st.bastion else None) if not hs.cut else None,
            "engine": hosts.engine_answers(h, timeout=1.0),
            "engine_socket": str(hosts.engine_socket(h)),
        })
    return {
        "name": cfg.name, "up": True, "subnet": cfg.subnet, "bridge": cfg.bridge,
        "registry": {"address": cfg.registry_address, "alive": registry.answers(cfg, timeout=1.0),
                     "ca": str(registry.certs_d_file(cfg))},
        "identity": str(cfg.identity), "known_hosts": str(cfg.known_hosts),
        "inventory": st.inventory, "ascend_devices": st.ascend_devices, "base_image": st.base_image,
        "shared": str(cfg.shared_dir), "hosts": out_hosts,
        "bastion": _bastion_status(cfg, st.bastion),
    }


def _bastion_status(cfg: SandboxConfig, hs: HostState | None) -> dict | None:
    if hs is None:
        return None
    h = cfg.bastion()
    return {"name": h.name, "address": h.address, "running": hosts.running(h, hs),
            "sshd": hosts.sshd_answers(h.address, timeout=0.5), "ssh_config": str(cfg.ssh_config)}


def _host(cfg: SandboxConfig, name: str) -> tuple[State, "hosts.HostNames", "hosts.HostState"]:
    st = State.load(cfg.state_file)
    if st is None or not st.hosts:
        raise UserError(f"sandbox {cfg.name!r} is not up: run `q7x2-deploy sandbox up N` first")
    h = cfg.host_by_name(name, max(x.index for x in st.hosts))
    return st, h, st.host(h.index)


def cut(cfg: SandboxConfig, name: str, log: Log = print) -> None:
    """Network loss: unplug the host's cable at the bridge."""
    _preflight()
    with locked(cfg):
        st, h, hs = _host(cfg, name)
        network.set_cable(h, False)
        hs.cut = True
        st.save(cfg.state_file)
    log(f"{h.name}: cable cut")


def heal(cfg: SandboxConfig, name: str, log: Log = print) -> None:
    _preflight()
    with locked(cfg):
        st, h, hs = _host(cfg, name)
        if not hs.stopped:
            network.set_cable(h, True)
        hs.cut = False
        st.save(cfg.state_file)
    log(f"{h.name}: cable back")


def stop(cfg: SandboxConfig, name: str, log: Log = print) -> None:
    """Power loss: every process of the host dies at once; its disks (data root, /data) stay."""
    _preflight()
    with locked(cfg):
        st, h, hs = _host(cfg, name)
        # A powered-off host does not answer at all (no RST, no ARP): unplug it too.
        network.set_cable(h, False)
        hosts.power_off(h, hs)
        hs.stopped = True
        st.save(cfg.state_file)
    log(f"{h.name}: powered off")


def start(cfg: SandboxConfig, name: str, log: Log = print) -> None:
    """Power on: same address, host key and disks; fresh /run, /dev and processes."""
    _preflight()
    with locked(cfg):
        st, h, hs = _host(cfg, name)
        hosts.prepare(cfg, h, st.ascend_devices, slurm=st.slurm)  # same keys and disks; host files as this version writes them
        hosts.start(cfg, h, hs)
        st.save(cfg.state_file)
        if not hs.cut:
            network.set_cable(h, True)
        hosts.wait_ready(h, hs, hidden=st.bastion is not None)
    log(f"{h.name}: powered on")
