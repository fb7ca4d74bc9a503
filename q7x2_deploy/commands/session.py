"""From an inventory path to an open cluster: the common start of every host-facing command."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster, open_cluster
from q7x2_deploy.transport.factory import TransportFactory, ssh_factory
from q7x2_deploy.validation import load_inventory
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
    """The inventory's plan, or the run's when recovery moved the job onto a spare: status,
    logs and watch then show the hosts that run it, not the one it left."""
    inv = load_inventory(path, scheduler=scheduler)
    return running_plan(build_plan(inv), {s.name for s in inv.spares})


def running_plan(plan: Plan, spares: set[str]) -> Plan:
    """The run directory's plan.json when it is this job's on the inventory's hosts and spares
    with other hosts in the ranks (a spare swapped in); otherwise `plan`. A plan.json that does
    not read back, or names a host the inventory no longer has, is not the running job's."""
    from q7x2_deploy.runs.rundir import run_dir_if_exists
    from q7x2_runtime.errors import UserError

    d = run_dir_if_exists(plan.job_name)
    f = d / "plan.json" if d is not None else None
    if f is None or not f.is_file():
        return plan
    try:
        ran = Plan.from_json(f.read_text(encoding="utf-8"), str(f))
    except (UserError, OSError, UnicodeDecodeError):
        return plan
    known = {h.name for h in plan.hosts} | spares
    names = [h.name for h in ran.hosts]
    if ran.job_name != plan.job_name or not set(names) <= known or names == [h.name for h in plan.hosts]:
        return plan
    return ran


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
