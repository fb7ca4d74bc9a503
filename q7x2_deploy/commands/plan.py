"""`q7x2-deploy plan INVENTORY [--json] [--scripts DIR]`: what `up` would do, touching no host."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

from q7x2_deploy.commands.scheduler_option import add_scheduler_argument
from q7x2_deploy.inventory import Inventory
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import Plan, build_plan, shell_line
from q7x2_deploy.render import render_host_script
from q7x2_deploy.ssh_route import ClientConfig, Endpoint, Route, load_client_config, resolve
from q7x2_deploy.validation import file_warnings
from q7x2_runtime.errors import UserError


def ssh_routes(plan: Plan, ssh_config: str | None) -> dict[str, Route]:
    """Each host's effective SSH settings and jump chain, read from the local ssh config only."""
    configs: dict[str | None, ClientConfig] = {}
    routes = {}
    for host in plan.hosts:
        path = ssh_config or (str(host.ssh["config"]) if host.ssh.get("config") else None)
        if path not in configs:
            configs[path] = load_client_config(path)
        routes[host.name] = resolve(host.address, host.ssh, configs[path])
    return routes


def _endpoint_line(e: Endpoint) -> str:
    alias = f" ({e.name} -> HostName {e.hostname})" if e.name != e.hostname else ""
    keys = ", ".join(e.identities) or "ssh-agent, then default keys"
    return (f"{e.login}{alias}; identity {keys}; known_hosts {', '.join(e.known_hosts)}; "
            f"connect timeout {e.connect_timeout:g} s; keepalive {e.keepalive_interval} s")


def route_lines(route: Route) -> list[str]:
    lines = [f"ssh {_endpoint_line(route.target)}"]
    lines += [f"  via jump host {i + 1}: {_endpoint_line(j)}" for i, j in enumerate(route.jumps)]
    if route.config:
        lines.append(f"  (ssh config {route.config}; the inventory's ssh settings override it)")
    return lines


def _print_human(plan: Plan, console: Console, routes: dict[str, Route]) -> None:
    """Headings in bold on a terminal; every command as one plain line, never cut or wrapped by
    us (a panel would cut each `docker run` at its width, and lay out long values slowly)."""
    console.print(
        f"[bold]job[/] {plan.job_name}  [bold]image[/] {plan.image_ref} ({plan.flavor}, via {plan.distribution})  "
        f"[bold]nodes[/] {plan.nnodes}  [bold]world size[/] {plan.world_size}  "
        f"[bold]master[/] {plan.master_addr}:{plan.master_port}  [bold]storage[/] {plan.storage}",
        highlight=False,
    )
    out = console.file
    for host in plan.hosts:
        console.print()
        console.print(Text(f"== {host.name} (node rank {host.node_rank})", style="bold"))
        body = [*route_lines(routes[host.name]), f"job spec -> {host.job_file}"]
        if plan.flavor == "ascend":
            body.append(f"NPUs used: {', '.join(map(str, host.npus)) or 'none'}")
        if host.detect_nic:
            body.append(f"NIC: detected by `up` (the interface carrying {host.address}) for GLOO_SOCKET_IFNAME, HCCL_SOCKET_IFNAME")
        body.append("")
        body += [f"{k}={v}" for k, v in host.env.items()]
        for step in host.steps:
            body += ["", f"# {step.phase}: {step.name}", shell_line(step.docker_run)]
            for kind, argv in (step.launch or {}).items():
                body += [f"#   then, inside, on a {'first start' if kind == 'first' else 'resume'}: {shell_line(argv)}"]
        out.write("\n".join(body) + "\n")
    out.flush()


def _write_scripts(plan: Plan, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for host in plan.hosts:
        target = directory / f"{host.node_rank:02d}-{host.name}.sh"
        tmp = target.with_suffix(".sh.tmp")
        tmp.write_text(render_host_script(plan, host), encoding="utf-8")
        os.chmod(tmp, 0o755)
        tmp.replace(target)


def _write_file(target: Path, text: str, where: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)
        tmp.replace(target)
    except OSError as e:
        raise UserError(f"cannot write scripts to {where}: {e.strerror}") from None


def _plan_kubernetes(inv: Inventory, args: argparse.Namespace) -> int:
    """The job's Kubernetes objects, ready for `kubectl apply -f -`: YAML (the default, -o yaml)
    or, with --json / -o json, a v1 List of them."""
    from q7x2_deploy.backends.kubernetes.manifests import build_manifests

    if args.scripts is not None:
        raise UserError("plan --scripts: per-host scripts are for scheduler kind ssh; a Kubernetes plan is its manifests")
    manifests = build_manifests(inv)
    if args.json or args.output == "json":
        sys.stdout.write(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests.objects}, indent=2) + "\n")
    else:
        sys.stdout.write(manifests.to_yaml())
    return 0


def _plan(args: argparse.Namespace) -> int:
    inv = load_inventory(Path(args.inventory), scheduler=args.scheduler)
    for line in file_warnings(Path(args.inventory), inv):  # stderr: the JSON on stdout stays clean
        print(line, file=sys.stderr)
    if inv.scheduler.kind == "kubernetes":
        return _plan_kubernetes(inv, args)
    if args.output == "yaml":
        raise UserError("plan -o yaml: only a Kubernetes plan is YAML (--scheduler kubernetes); this one prints as text or --json")
    if inv.scheduler.kind == "slurm":
        from q7x2_deploy.backends.slurm.script import build_slurm_job, render_sbatch

        job = build_slurm_job(inv)
        script = render_sbatch(inv, job)
        if args.scripts is not None:
            _write_file(Path(args.scripts) / f"{job.slurm_name}.sbatch", script, args.scripts)
        sys.stdout.write(json.dumps({"scheduler": "slurm", "sbatch": script}, indent=2) + "\n" if args.json or args.output == "json" else script)
        return 0
    if inv.scheduler.kind != "ssh":
        raise UserError(f"plan --scheduler {inv.scheduler.kind}: this version renders only ssh and slurm plans")
    plan = build_plan(inv)
    if args.scripts is not None:
        try:
            _write_scripts(plan, Path(args.scripts))
        except OSError as e:
            raise UserError(f"cannot write scripts to {args.scripts}: {e.strerror}") from None
    routes = ssh_routes(plan, args.ssh_config)
    if args.json or args.output == "json":
        data = plan.to_dict()
        for host in data["hosts"]:  # type: ignore[attr-defined]
            host["ssh_route"] = routes[host["name"]].to_dict()
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        _print_human(plan, Console(soft_wrap=True), routes)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="print per host everything `up` would do, touching no host")
    p.add_argument("inventory", help="inventory YAML file")
    add_scheduler_argument(p)
    p.add_argument("--json", action="store_true", help="the plan as JSON (format: docs/plan-format.md)")
    p.add_argument("--ssh-config", metavar="PATH", default=None,
                   help="OpenSSH client config to resolve logins with (default: the inventory's ssh.config, else ~/.ssh/config)")
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default=None,
                   help="text or json (= --json) for ssh; yaml (the default) or json for --scheduler kubernetes: the manifests")
    p.add_argument("--scripts", metavar="DIR", help="also write one readable shell script per host into DIR")
    p.set_defaults(func=_plan)
