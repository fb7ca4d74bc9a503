"""The sandbox network: one bridge in the root namespace, one veth "cable" per host.

Hosts get no default route: the only addresses they can reach are the subnet's, so nothing
a sandbox host does can send traffic beyond the sandbox.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import re
import socket
import threading

from q7x2_runtime.errors import UserError

from q7x2_deploy.sandbox.config import HostNames, SandboxConfig
from q7x2_deploy.sandbox.sysutil import run

NETNS_DIR = "/run/netns"


def netns_path(netns: str) -> str:
    return f"{NETNS_DIR}/{netns}"


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def check_subnet_free(cfg: SandboxConfig) -> None:
    """Refuse a subnet that overlaps any route the machine already has (unless it is ours)."""
    ours = cfg.network
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for r in routes:
        dst = r.get("dst", "")
        if dst in ("", "default") or r.get("dev") == cfg.bridge:
            continue
        try:
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.prefixlen > 0 and net.overlaps(ours) and r.get("type", "unicast") == "unicast":
            raise UserError(f"subnet {cfg.subnet} overlaps the route {dst} on {r.get('dev')}: pick another with --subnet")


def ensure_bridge(cfg: SandboxConfig) -> None:
    if not link_exists(cfg.bridge):
        run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
    addrs = run(["ip", "-j", "-4", "addr", "show", "dev", cfg.bridge]).stdout
    if f'"{cfg.bridge_address}"' not in addrs:
        run(["ip", "addr", "add", f"{cfg.bridge_address}/{cfg.prefixlen}", "dev", cfg.bridge])
    run(["ip", "link", "set", cfg.bridge, "up"])


def forward_rule(cfg: SandboxConfig) -> list[str]:
    # The root engine sets FORWARD's policy to DROP and br_netfilter sends bridged frames
    # through it: without this, host-to-host traffic is silently dropped. Only traffic that
    # enters and leaves the sandbox bridge is accepted, nothing to or from the outside.
    return ["FORWARD", "-i", cfg.bridge, "-o", cfg.bridge, "-m", "comment", "--comment",
            cfg.iptables_comment, "-j", "ACCEPT"]


def ensure_iptables(rule: list[str]) -> None:
    if run(["iptables", "-w", "-C", *rule], check=False).returncode != 0:
        run(["iptables", "-w", "-I", *rule])


def remove_iptables(rule: list[str]) -> None:
    while run(["iptables", "-w", "-C", *rule], check=False).returncode == 0:
        run(["iptables", "-w", "-D", *rule], check=False)


def sweep_iptables(comment: str) -> None:
    """Remove any rule carrying our comment (after a crash the state may not list it)."""
    for table in ("filter",):
        for line in run(["iptables", "-w", "-t", table, "-S"], check=False).stdout.splitlines():
            if f'"{comment}"' in line or f" {comment} " in f"{line} ":
                if line.startswith("-A "):
                    args = line[3:].replace(f'"{comment}"', comment).split()
                    run(["iptables", "-w", "-t", table, "-D", *args], check=False)


def ensure_host_link(cfg: SandboxConfig, h: HostNames, plugged: bool = True) -> None:
    """Create the host's namespace and cable, address it and bring it up (idempotent)."""
    path = netns_path(h.netns)
    if not os.path.exists(path):
        run(["ip", "netns", "add", h.netns])
    ns = ["ip", "-n", h.netns]
    if run([*ns, "link", "show", "dev", h.nic], check=False).returncode != 0:
        if link_exists(h.veth_root):
            run(["ip", "link", "del", h.veth_root])
        run(["ip", "link", "add", h.veth_root, "type", "veth", "peer", "name", h.veth_peer_tmp])
        run(["ip", "link", "set", h.veth_peer_tmp, "netns", h.netns])
        run([*ns, "link", "set", h.veth_peer_tmp, "name", h.nic])
        run([*ns, "addr", "add", f"{h.address}/{cfg.prefixlen}", "dev", h.nic])
    run(["ip", "link", "set", h.veth_root, "master", cfg.bridge])
    run([*ns, "link", "set", "lo", "up"])
    run([*ns, "link", "set", h.nic, "up"])
    set_cable(h, plugged)


def set_cable(h: HostNames, up: bool) -> None:
    """Plug or unplug the host's cable at the bridge: its eth0 loses carrier like a pulled cable."""
    run(["ip", "link", "set", h.veth_root, "up" if up else "down"])


def cable_up(h: HostNames) -> bool:
    out = run(["ip", "-j", "link", "show", "dev", h.veth_root], check=False).stdout
    try:
        return "UP" in json.loads(out)[0].get("flags", [])
    except (ValueError, IndexError):
        return False


def remove_host_link(h: HostNames) -> None:
    if link_exists(h.veth_root):
        run(["ip", "link", "del", h.veth_root], check=False)
    if os.path.exists(netns_path(h.netns)):
        run(["ip", "netns", "del", h.netns], check=False)


def list_netns(cfg: SandboxConfig) -> list[str]:
    """Namespaces of this sandbox's hosts: exactly NAME-sbx-N, never anything else."""
    pat = re.compile(rf"^{re.escape(cfg.name)}-sbx-[0-9]+$")
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if pat.match(n))
    except FileNotFoundError:
        return []


def remove_bridge(cfg: SandboxConfig) -> None:
    if link_exists(cfg.bridge):
        run(["ip", "link", "del", cfg.bridge], check=False)


def list_links(cfg: SandboxConfig) -> list[str]:
    """This sandbox's cable ends in the root namespace: exactly NAME-vN and NAME-pN."""
    pat = re.compile(rf"^{re.escape(cfg.name)}-[vp][0-9]+$")
    out = run(["ip", "-j", "link", "show"], check=False).stdout
    try:
        return [l["ifname"] for l in json.loads(out or "[]") if pat.match(l.get("ifname", ""))]
    except ValueError:
        return []


def hidden_rule(cfg: SandboxConfig) -> list[str]:
    """Inside a host behind the bastion: refuse every connection the machine opens to it.

    The machine's side of the bridge is `bridge_address`; only new connections from it are
    refused, so the host still pulls from the registry there (the replies are established
    traffic) and the bastion and the other hosts still reach it."""
    return ["INPUT", "-s", cfg.bridge_address, "-m", "conntrack", "--ctstate", "NEW",
            "-m", "comment", "--comment", cfg.iptables_comment, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]


def hide_from_machine(cfg: SandboxConfig, h: HostNames) -> None:
    """Idempotent; the rule lives in the host's namespace and goes with it on `down`."""
    ns = ["ip", "netns", "exec", h.netns, "iptables", "-w"]
    rule = hidden_rule(cfg)
    if run([*ns, "-C", *rule], check=False).returncode != 0:
        run([*ns, "-A", *rule])


def is_hidden(cfg: SandboxConfig, h: HostNames) -> bool:
    return run(["ip", "netns", "exec", h.netns, "iptables", "-w", "-C", *hidden_rule(cfg)], check=False).returncode == 0


_CLONE_NEWNET = 0x40000000


def connect_inside(netns: str, address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection opened from inside a host's network namespace (to probe a host the
    machine itself may not connect to). The namespace is entered by a short-lived thread:
    setns(2) moves only the calling thread, and the socket keeps the namespace it was made in."""
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.create_connection((address, port), timeout=timeout))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result.append(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]
