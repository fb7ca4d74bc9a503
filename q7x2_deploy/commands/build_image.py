"""`q7x2-deploy build-image [INVENTORY]`: render the Dockerfile, fill an offline wheelhouse,
build and tag the image in the local engine, and push it when asked."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from q7x2_deploy import __version__
from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.session import add_inventory_argument
from q7x2_deploy.image.base_image import ensure_base_image
from q7x2_deploy.image.build import build_image, docker_client, image_present, push_image
from q7x2_deploy.image.context import assemble_context
from q7x2_deploy.image.delivery import short_id
from q7x2_deploy.image.wheelhouse import WheelhouseSpec, prepare_wheelhouse
from q7x2_deploy.render import CPU_TORCH_VERSION, AscendStack


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("build-image", help="build the job image offline (and push it)")
    add_inventory_argument(p, optional=True)
    p.add_argument("--flavor", choices=("ascend", "cpu"), help="default: the inventory's image.flavor")
    p.add_argument("--tag", metavar="REF", help="image reference (default: the inventory's image)")
    p.add_argument("--push", action="store_true", help="push to the registry named in the reference")
    p.add_argument("--base-image", metavar="IMG",
                   help="base image in the local engine (cpu default: the sandbox's Debian base)")
    p.add_argument("--wheelhouse", metavar="DIR", type=Path,
                   help="wheelhouse directory to use and fill (default: a cache under ~/.cache/q7x2)")
    p.add_argument("--vendor", metavar="DIR", type=Path,
                   help="ascend: directory with MindSpeed/, MindSpeed-LLM/ and Megatron-LM/ sources")
    p.add_argument("--python-version", help="ascend: target Python of the base image, e.g. 3.8")
    p.add_argument("--platform", help="ascend: target wheel platform, e.g. manylinux2014_aarch64")
    p.set_defaults(func=run)


def _target(args: argparse.Namespace) -> tuple[str, str]:
    flavor, ref = args.flavor, args.tag
    if args.inventory:
        from q7x2_deploy.inventory import load_inventory

        image = load_inventory(args.inventory).image
        flavor = flavor or image.flavor
        ref = ref or image.ref
    flavor = flavor or "cpu"
    return flavor, ref or f"q7x2/qwen25-{flavor}:{__version__}"


def _requirements(flavor: str, vendor: Path | None) -> list[str]:
    if flavor == "cpu":
        # Pinned: an unpinned torch resolves to a multi-GB CUDA build.
        return [f"torch=={CPU_TORCH_VERSION}"]
    stack = AscendStack()
    reqs = [f"torch=={stack.torch_version}", f"torch_npu=={stack.torch_npu_version}", stack.apex_requirement]
    if vendor is not None and (vendor / "MindSpeed-LLM" / "requirements.txt").is_file():
        reqs += ["-r", str(vendor / "MindSpeed-LLM" / "requirements.txt")]
    return reqs


def _default_base_image(flavor: str, progress: Callable[[str], None]) -> str:
    if flavor != "cpu":
        raise DeployError("the ascend image needs --base-image: a CANN image in the local engine")
    return ensure_base_image(log=progress)


def run(args: argparse.Namespace) -> int:
    console = Console()
    flavor, ref = _target(args)
    started = time.monotonic()

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, style="dim")

    if flavor == "ascend" and args.vendor is None:
        # Checked before the (long) wheelhouse step: nothing can be cloned inside the build.
        raise DeployError("the ascend image needs --vendor DIR holding MindSpeed/, MindSpeed-LLM/ and "
                          "Megatron-LM/ (the build has no network)")
    client = docker_client()
    base = args.base_image or _default_base_image(flavor, say)
    if not image_present(client, base):
        raise DeployError(f"base image {base} is not in the local engine (nothing is pulled during builds)")
    with console.status(f"[bold]wheelhouse for {flavor}"):
        spec = WheelhouseSpec(flavor=flavor, requirements=_requirements(flavor, args.vendor),
                              python_version=args.python_version, platform=args.platform)
        wheelhouse = prepare_wheelhouse(spec, args.wheelhouse, progress=say)
    t_wheels = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="q7x2-build-") as tmp, console.status(f"[bold]building {ref}"):
        ctx = assemble_context(Path(tmp), flavor=flavor, base_image=base, wheelhouse=wheelhouse,
                               vendor=args.vendor)
        image_id = build_image(ctx, ref, progress=say, client=client)
    console.print(f"built {ref} ({short_id(image_id)}) from {base} "
                  f"in {time.monotonic() - started:.0f}s (wheelhouse {t_wheels:.0f}s)")
    if args.push:
        with console.status(f"[bold]pushing {ref}"):
            push_image(ref, progress=say, client=client)
        console.print(f"pushed {ref}")
    return 0
