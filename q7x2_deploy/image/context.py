"""The build context the Dockerfile templates expect: Dockerfile, wheels/, entrypoint.sh and,
for ascend, optionally vendor/ with MindSpeed, MindSpeed-LLM and Megatron-LM sources."""

from __future__ import annotations

import shutil
from pathlib import Path

from q7x2_deploy.errors import DeployError
from q7x2_deploy.image.wheelhouse import PROJECT_DIST, link_tree
from q7x2_deploy.render import render_dockerfile
from q7x2_deploy.resources import images_dir

VENDOR_SOURCES = ("MindSpeed", "MindSpeed-LLM", "Megatron-LM")


def assemble_context(dest: Path, *, flavor: str, base_image: str, wheelhouse: Path,
                     vendor: Path | None = None, source_repos: dict[str, str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    if vendor is not None:
        missing = [s for s in VENDOR_SOURCES if not (vendor / s).is_dir()]
        if missing:
            raise DeployError(f"--vendor {vendor}: missing {', '.join(missing)}/ (need {', '.join(VENDOR_SOURCES)})")
        shutil.copytree(vendor, dest / "vendor", symlinks=True,
                        ignore=shutil.ignore_patterns(".git", "__pycache__"))
    try:
        dockerfile = render_dockerfile(flavor, base_image=base_image, vendor=vendor is not None,
                                       source_repos=source_repos if flavor == "ascend" else None)
    except ValueError as e:
        raise DeployError(f"cannot render the {flavor} Dockerfile: {e} (pass --vendor DIR)") from e
    (dest / "Dockerfile").write_text(dockerfile)
    # The project's wheel apart from its dependencies: the Dockerfiles install the dependencies
    # in an earlier layer, which then stays cached while only the project changes.
    link_tree(wheelhouse, dest / "wheels" / "deps", exclude_prefix=PROJECT_DIST)
    link_tree(wheelhouse, dest / "wheels" / "project", only_prefix=PROJECT_DIST)
    shutil.copy2(images_dir() / "entrypoint.sh", dest / "entrypoint.sh")
    (dest / "entrypoint.sh").chmod(0o755)
    (dest / ".dockerignore").write_text("**/.git\n**/__pycache__\n")
    return dest
