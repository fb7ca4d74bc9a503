"""From an inventory path to an open cluster: the common start of every host-facing command."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster, TransportFactory, open_cluster, ssh_factory
from q7x2_deploy.inventory import load_inventory
from q7x2_deploy.plan import Plan, build_plan


def add_inventory_argument(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    parser.add_argument("inventory", metavar="INVENTORY", nargs="?" if optional else None,
                        help="the inventory YAML file")


def add_host_key_argument(parser: argparse.ArgumentParser) -> None:
    """The options of every command that logs in to hosts: host keys and the ssh config."""
    parser.add_argument("--accept-new-host-keys", action="store_true",
                        help="trust hosts not yet in known_hosts and append their keys "
                             "(a changed key is refused regardless)")
    parser.add_argument("--ssh-config", metavar="PATH", default=None,
                        help="OpenSSH client config to log in with (default: the inventory's ssh.config, "
                             "else ~/.ssh/config); inventory values override it")


def load_plan(path: str, scheduler: str | None = None) -> Plan:
    return build_plan(load_inventory(path, scheduler=scheduler))


def only_hosts(plan: Plan, names: list[str] | None) -> Plan:
    """The plan restricted to some hosts (for `logs --host`)."""
    if not names:
        return plan
    unknown = sorted(set(names) - {h.name for h in plan.hosts})
    if unknown:
        raise DeployError(f"no host named {', '.join(unknown)} in the inventory "
                          f"(hosts: {', '.join(h.name for h in plan.hosts)})")
    from dataclasses import replace

    return replace(plan, hosts=[h for h in plan.hosts if h.name in names])


@contextmanager
def cluster_from_args(args: argparse.Namespace, factory: TransportFactory | None = None,
                      plan: Plan | None = None) -> Iterator[Cluster]:
    plan = plan or load_plan(args.inventory, getattr(args, "scheduler", None))
    factory = factory or ssh_factory(getattr(args, "accept_new_host_keys", False), getattr(args, "ssh_config", None))
    with open_cluster(plan, factory) as cluster:
        yield cluster
