"""`q7x2-deploy sandbox`: a real multi-host cluster on this machine, for trying and testing.

    q7x2-deploy sandbox up 2 [--ascend-devices 16] [--inventory PATH] [--slurm] [--bastion]
    q7x2-deploy sandbox status [--json]
    q7x2-deploy sandbox cut|heal|stop|start HOST
    q7x2-deploy sandbox ssh HOST [COMMAND...]
    q7x2-deploy sandbox down
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from q7x2_runtime.errors import UserError

from q7x2_deploy.sandbox import cluster
from q7x2_deploy.sandbox.config import DEFAULT_NAME


def _log(msg: str) -> None:
    print(f"sandbox: {msg}", flush=True)


def _up(args: argparse.Namespace) -> int:
    cfg = cluster.config_for(args.name, args.subnet)
    cluster.up(cfg, args.hosts, ascend_devices=args.ascend_devices, inventory=Path(args.inventory),
               npus_per_node=args.npus_per_node, with_base_image=not args.no_base_image,
               load_base_image=args.load_base_image, with_sample=not args.no_sample, slurm=args.slurm,
               bastion=args.bastion, log=_log)
    _print_status(cluster.status(cfg))
    return 0


def _down(args: argparse.Namespace) -> int:
    cfg = cluster.config_for(args.name, None)
    cluster.down(cfg, log=_log)
    if args.purge:
        cluster.purge(cfg, log=_log)
    return 0


def _print_status(s: dict) -> None:
    if not s["up"]:
        print(f"sandbox {s['name']!r} is down")
        return
    reg = s["registry"]
    print(f"sandbox {s['name']!r}: subnet {s['subnet']} on bridge {s['bridge']}; "
          f"registry {reg['address']} {'alive' if reg['alive'] else 'NOT ANSWERING'}")
    print(f"  ssh: root, identity {s['identity']}, known_hosts {s['known_hosts']}")
    if s.get("bastion"):
        b = s["bastion"]
        print(f"  bastion: {b['name']} {b['address']} ({'up' if b['sshd'] else 'sshd NOT ANSWERING'}); "
              f"the hosts only through it, ssh config {b['ssh_config']}")
    print(f"  inventory: {s['inventory']}")
    print(f"  {'HOST':<8} {'ADDRESS':<15} {'NIC':<5} {'POWER':<5} {'CABLE':<6} {'SSHD':<5} ENGINE")
    for h in s["hosts"]:
        power = "on" if h["running"] else "off"
        sshd = "-" if h["sshd"] is None else ("up" if h["sshd"] else "down")
        print(f"  {h['name']:<8} {h['address']:<15} {h['nic']:<5} {power:<5} {('cut' if h['cut'] else 'ok') if h['cable'] else 'off':<6} "
              f"{sshd:<5} {'up' if h['engine'] else 'down'}")


def _status(args: argparse.Namespace) -> int:
    s = cluster.status(cluster.config_for(args.name, None))
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        print()
    else:
        _print_status(s)
    return 0


def _fault(fn):
    def run(args: argparse.Namespace) -> int:
        fn(cluster.config_for(args.name, None), args.host, log=_log)
        return 0
    return run


def _ssh(args: argparse.Namespace) -> int:
    """Log in the way the deployer does: the sandbox key and strict host key checking."""
    cfg = cluster.config_for(args.name, None)
    s = cluster.status(cfg)
    if not s["up"]:
        raise UserError(f"sandbox {args.name!r} is not up: run `q7x2-deploy sandbox up N` first")
    if s.get("bastion"):  # through the bastion, as the deployer goes
        os.execvp("ssh", ["ssh", "-F", s["bastion"]["ssh_config"], args.host, *args.remote_command])
    h = cfg.host_by_name(args.host, len(s["hosts"]))
    argv = ["ssh", "-i", s["identity"], "-o", f"UserKnownHostsFile={s['known_hosts']}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", f"root@{h.address}", *args.remote_command]
    os.execvp("ssh", argv)
    return 0  # not reached


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sandbox", help="a real multi-host cluster on this machine (root)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--name", default=DEFAULT_NAME, help="sandbox name: prefix of its namespaces and links")
    sub = p.add_subparsers(dest="sandbox_command", required=True, metavar="SUBCOMMAND")

    u = sub.add_parser("up", help="start N hosts (adds hosts to a running sandbox)")
    u.add_argument("hosts", type=int, help="number of hosts")
    u.add_argument("--subnet", default=None, help="private IPv4 subnet of the sandbox (default 10.213.7.0/24)")
    u.add_argument("--ascend-devices", type=int, default=0, metavar="N",
                   help="simulated /dev/davinci0..N-1 and driver files on every host")
    u.add_argument("--inventory", default="inventory.sandbox.yaml", help="where to write the inventory")
    u.add_argument("--npus-per-node", type=int, default=1, help="processes per host in the inventory's job")
    u.add_argument("--load-base-image", action="store_true", help="also load the base image into every host engine")
    u.add_argument("--no-base-image", action="store_true", help="do not build the base image in the root engine")
    u.add_argument("--bastion", action="store_true",
                   help="add a jump host: only it accepts connections from this machine, the hosts only through it; "
                        "writes an ssh config with ProxyJump that the inventory uses")
    u.add_argument("--no-sample", action="store_true", help="do not write the sample checkpoint and dataset")
    u.add_argument("--slurm", action="store_true",
                   help="also run Slurm: munged and slurmd on every host, slurmctld on the first (the login host); "
                        "the inventory then has scheduler kind slurm")
    u.set_defaults(func=_up)

    d = sub.add_parser("down", help="remove every namespace, link, daemon, rule and file of the sandbox")
    d.add_argument("--purge", action="store_true",
                   help="also remove the cached base rootfs (the next `up` rebuilds it, about a minute)")
    d.set_defaults(func=_down)

    s = sub.add_parser("status", help="hosts, addresses, sshd, engines, registry")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_status)

    for name, fn, text in (("cut", cluster.cut, "network loss: unplug HOST's cable"),
                           ("heal", cluster.heal, "plug HOST's cable back"),
                           ("stop", cluster.stop, "power loss: kill everything on HOST"),
                           ("start", cluster.start, "power HOST back on with the same identity")):
        f = sub.add_parser(name, help=text)
        f.add_argument("host", help="host name (sbx-1, ...) or address")
        f.set_defaults(func=_fault(fn))

    x = sub.add_parser("ssh", help="log in to HOST (or run COMMAND there) with the sandbox key")
    x.add_argument("host", help="host name (sbx-1, ...) or address")
    x.add_argument("remote_command", nargs=argparse.REMAINDER, metavar="COMMAND",
                   help="command to run instead of a shell")
    x.set_defaults(func=_ssh)
