"""The build context the Dockerfile templates expect: Dockerfile, pins.json, wheels/,
entrypoint.sh and, for ascend, vendor/ with MindSpeed, MindSpeed-LLM and Megatron-LM sources
(each with a record of the git tag or commit it was copied at, for `q7x2-runtime doctor`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from q7x2_deploy.errors import DeployError
from q7x2_deploy.image.wheelhouse import PROJECT_DIST, link_tree
from q7x2_deploy.render import image_pins, render_dockerfile
from q7x2_deploy.resources import images_dir
from q7x2_runtime.doctor.installed import SOURCE_RECORD

VENDOR_SOURCES = ("MindSpeed", "MindSpeed-LLM", "Megatron-LM")


def _git(tree: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def source_record(tree: Path) -> dict[str, str | None]:
    """The tag (exact match only), branch and commit of a vendored checkout (the pins name
    upstream refs, tags such as v2.0.0 or branches such as 2.0.0_core_r0.8.0); all None without
    git metadata, which doctor then reports as sources of unrecorded version."""
    if not (tree / ".git").exists():
        return {"tag": None, "branch": None, "commit": None}
    branch = _git(tree, "rev-parse", "--abbrev-ref", "HEAD")
    return {"tag": _git(tree, "describe", "--tags", "--exact-match"),
            "branch": branch if branch != "HEAD" else None,  # HEAD: detached, no branch
            "commit": _git(tree, "rev-parse", "HEAD")}


def _copy_vendor(vendor: Path, dest: Path) -> None:
    missing = [s for s in VENDOR_SOURCES if not (vendor / s).is_dir()]
    if missing:
        raise DeployError(f"--vendor {vendor}: missing {', '.join(missing)}/ (need {', '.join(VENDOR_SOURCES)})")
    shutil.copytree(vendor, dest, symlinks=True, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    for name in VENDOR_SOURCES:
        (dest / name / SOURCE_RECORD).write_text(json.dumps(source_record(vendor / name)) + "\n")


def assemble_context(dest: Path, *, flavor: str, base_image: str, wheelhouse: Path,
                     vendor: Path | None = None, source_repos: dict[str, str] | None = None,
                     python_version: str | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    if vendor is not None:
        _copy_vendor(vendor, dest / "vendor")
    try:
        dockerfile = render_dockerfile(flavor, base_image=base_image, vendor=vendor is not None,
                                       source_repos=source_repos if flavor == "ascend" else None)
    except ValueError as e:
        raise DeployError(f"cannot render the {flavor} Dockerfile: {e} (pass --vendor DIR)") from e
    (dest / "Dockerfile").write_text(dockerfile)
    (dest / "pins.json").write_text(image_pins(flavor, python_version=python_version).to_json())
    # The project's wheel apart from its dependencies: the Dockerfiles install the dependencies
    # in an earlier layer, which then stays cached while only the project changes.
    link_tree(wheelhouse, dest / "wheels" / "deps", exclude_prefix=PROJECT_DIST)
    link_tree(wheelhouse, dest / "wheels" / "project", only_prefix=PROJECT_DIST)
    shutil.copy2(images_dir() / "entrypoint.sh", dest / "entrypoint.sh")
    (dest / "entrypoint.sh").chmod(0o755)
    (dest / ".dockerignore").write_text("**/.git\n**/__pycache__\n")
    return dest
