"""`q7x2-deploy build-image [INVENTORY]`: render the Dockerfile, fill an offline wheelhouse,
build and tag the image in the local engine, and push it when asked."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.text import Text

from q7x2_deploy import __version__
from q7x2_deploy.commands.build_progress import StageProgress
from q7x2_deploy.errors import DeployError
from q7x2_deploy.commands.session import add_inventory_argument
from q7x2_deploy.image.base_image import ensure_base_image
from q7x2_deploy.image.build import build_image, docker_client, image_present, push_image
from q7x2_deploy.image.context import assemble_context
from q7x2_deploy.executor.image_delivery import short_id
from q7x2_deploy.image.ascend_requirements import source_requirements
from q7x2_deploy.image.target_wheelhouse import MANIFEST, Manifest, check_against_manifest, fill_target_wheelhouse
from q7x2_deploy.image.wheelhouse import PROJECT_DIST, WheelhouseSpec, prepare_wheelhouse
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
    p.add_argument("--python-version", help="ascend: target Python of the base image, e.g. 3.10")
    p.add_argument("--platform", help="ascend: target wheel platform, e.g. manylinux2014_aarch64")
    p.add_argument("--wheelhouse-only", metavar="DIR", type=Path,
                   help="only fill DIR with every wheel for --platform/--python-version and a manifest.json "
                        "(for an air-gapped build later: --wheelhouse DIR); no Docker engine needed")
    p.add_argument("--find-links", metavar="DIR", type=Path, action="append", default=[],
                   help="more local wheels, e.g. apex built for Ascend (repeatable)")
    p.set_defaults(func=run)


def _target(args: argparse.Namespace) -> tuple[str, str]:
    flavor, ref = args.flavor, args.tag
    if args.inventory:
        from q7x2_deploy.validation import load_inventory

        image = load_inventory(args.inventory).image
        flavor = flavor or image.flavor
        ref = ref or image.ref
    flavor = flavor or "cpu"
    return flavor, ref or f"q7x2/qwen25-{flavor}:{__version__}"


def _requirements(flavor: str, vendor: Path | None, find_links: list[Path]) -> tuple[list[str], list[str]]:
    """What the wheelhouse must hold beyond the project, and what nobody publishes that is
    not among the local wheels either (apex for Ascend is built by each site)."""
    if flavor == "cpu":
        # Pinned: an unpinned torch resolves to a multi-GB CUDA build.
        return [f"torch=={CPU_TORCH_VERSION}"], []
    stack = AscendStack()
    reqs = [f"torch=={stack.torch_version}", f"torch_npu=={stack.torch_npu_version}", *source_requirements(vendor)]
    if any(d.glob("apex-*.whl") for d in find_links):
        return [*reqs, stack.apex_requirement], []
    return reqs, ["apex (built for Ascend by the site: pass --find-links DIR holding its wheel)"]


def _default_base_image(flavor: str, progress: Callable[[str], None]) -> str:
    if flavor != "cpu":
        raise DeployError("the ascend image needs --base-image: a CANN image in the local engine")
    return ensure_base_image(log=progress)


def _wheelhouse_only(args: argparse.Namespace, flavor: str, say: Callable[[str], None], console: Console) -> int:
    if flavor == "ascend" and not (args.platform and args.python_version):
        raise DeployError("--wheelhouse-only for ascend needs the target hosts' --platform (e.g. "
                          "manylinux2014_aarch64) and --python-version (e.g. 3.10)")
    for d in args.find_links:
        if not d.is_dir():
            raise DeployError(f"--find-links {d}: not a directory")
    started = time.monotonic()
    reqs, missing = _requirements(flavor, args.vendor, args.find_links)
    spec = WheelhouseSpec(flavor=flavor, requirements=reqs, python_version=args.python_version,
                          platform=args.platform, extra_find_links=list(args.find_links))
    with console.status(f"[bold]wheelhouse for {flavor} ({args.platform}, Python {args.python_version})"):
        manifest = fill_target_wheelhouse(args.wheelhouse_only, spec, missing=missing, progress=say)
    size = sum(w.size for w in manifest.wheels)
    console.print(f"wheelhouse {args.wheelhouse_only}: {len(manifest.wheels)} wheels, {size / 1e6:.0f} MB, "
                  f"resolves offline for {args.platform}/Python {args.python_version} "
                  f"({time.monotonic() - started:.0f}s); manifest.json lists each with its sha256", soft_wrap=True)
    if manifest.built_from_sdists:
        console.print("built here from sdists (pure Python, no wheel published): "
                      + ", ".join(manifest.built_from_sdists), soft_wrap=True)
    for m in manifest.missing:
        console.print(Text(f"not in the wheelhouse: {m}", style="yellow"), soft_wrap=True)
    return 0


def _carried_wheelhouse(directory: Path, flavor: str) -> Manifest:
    """A wheelhouse made by --wheelhouse-only, checked whole, used as it is (no network)."""
    manifest = check_against_manifest(directory)
    if manifest.flavor != flavor:
        raise DeployError(f"{directory} was filled for the {manifest.flavor} image, not {flavor}")
    if not any(w.file.startswith(f"{PROJECT_DIST}-{__version__}-") for w in manifest.wheels):
        raise DeployError(f"{directory} holds no q7x2-deploy {__version__} wheel; fill it again with --wheelhouse-only")
    if flavor == "ascend" and not any(w.name == "apex" for w in manifest.wheels):
        raise DeployError(f"{directory} holds no apex wheel: build apex for Ascend, then fill the wheelhouse "
                          "again with --find-links DIR holding it")
    return manifest


def run(args: argparse.Namespace) -> int:
    console = Console()
    flavor, ref = _target(args)
    started = time.monotonic()

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, style="dim", soft_wrap=True)

    if args.wheelhouse_only is not None:
        return _wheelhouse_only(args, flavor, say, console)

    if flavor == "ascend" and args.vendor is None:
        # Checked before the (long) wheelhouse step: nothing can be cloned inside the build.
        raise DeployError("the ascend image needs --vendor DIR holding MindSpeed/, MindSpeed-LLM/ and "
                          "Megatron-LM/ (the build has no network)")
    client = docker_client()
    base = args.base_image or _default_base_image(flavor, say)
    if not image_present(client, base):
        raise DeployError(f"base image {base} is not in the local engine (nothing is pulled during builds)")
    python_version = args.python_version
    if args.wheelhouse is not None and (args.wheelhouse / MANIFEST).exists():
        manifest = _carried_wheelhouse(args.wheelhouse, flavor)
        wheelhouse, python_version = args.wheelhouse, python_version or manifest.python_version
        say(f"wheelhouse {wheelhouse}: {len(manifest.wheels)} wheels, all as its manifest lists them")
    else:
        with StageProgress(console, f"wheelhouse for {flavor}", kind="wheelhouse") as stage:
            reqs, missing = _requirements(flavor, args.vendor, args.find_links)
            if missing:
                raise DeployError(f"the {flavor} image needs {missing[0]}")
            spec = WheelhouseSpec(flavor=flavor, requirements=reqs, python_version=args.python_version,
                                  platform=args.platform, extra_find_links=list(args.find_links))
            wheelhouse = prepare_wheelhouse(spec, args.wheelhouse, progress=stage.feed)
    t_wheels = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="q7x2-build-") as tmp, \
            StageProgress(console, f"building {ref}", kind="build") as stage:
        ctx = assemble_context(Path(tmp), flavor=flavor, base_image=base, wheelhouse=wheelhouse,
                               vendor=args.vendor, python_version=python_version)
        image_id = build_image(ctx, ref, progress=stage.feed, client=client)
    console.print(f"built {ref} ({short_id(image_id)}) from {base} "
                  f"in {time.monotonic() - started:.0f}s (wheelhouse {t_wheels:.0f}s)")
    if args.push:
        with console.status(f"[bold]pushing {ref}"):
            push_image(ref, progress=say, client=client)
        console.print(f"pushed {ref}")
    return 0
