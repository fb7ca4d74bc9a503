"""`build-image --wheelhouse-only DIR`: every wheel the image installs, for the target hosts'
platform and Python, in a directory that can be carried to an air-gapped site, with a
manifest.json (name, version, sha256, size of each wheel; the target; what was built here from
an sdist; what is missing). `build-image --wheelhouse DIR` then builds from it without any
network, after checking every wheel against the manifest.

The downloads go to the wheelhouse cache (~/.cache/q7x2/wheelhouse), so a second run only
rebuilds this project's wheel; DIR receives hard links (copies across filesystems). Before the
manifest is written the wheelhouse must resolve offline for the target (`pip install
--no-index --dry-run` with the same platform and Python), so a DIR with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from q7x2_deploy.errors import DeployError
from q7x2_deploy.image.wheelhouse import (
    _STAMP,
    PROJECT_DIST,
    Progress,
    WheelhouseSpec,
    _pip,
    link_tree,
    prepare_wheelhouse,
    target_args,
)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# A wheel file name: distribution-version(-build)?-python-abi-platform.whl
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


@dataclass
class WheelEntry:
    file: str
    name: str
    version: str
    sha256: str
    size: int


@dataclass
class Manifest:
    flavor: str
    platform: str | None
    python_version: str | None
    requirements: list[str]
    wheels: list[WheelEntry] = field(default_factory=list)
    built_from_sdists: list[str] = field(default_factory=list)  # pure-Python wheels built here
    missing: list[str] = field(default_factory=list)  # what the image needs but nobody publishes

    def to_json(self) -> str:
        return json.dumps({"format": MANIFEST_FORMAT, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.pop("format", None) != MANIFEST_FORMAT:
                raise ValueError(f"not a format-{MANIFEST_FORMAT} manifest")
            data["wheels"] = [WheelEntry(**w) for w in data["wheels"]]
            return cls(**data)
        except FileNotFoundError:
            raise DeployError(f"{path}: no manifest; fill the wheelhouse with `build-image --wheelhouse-only "
                              f"{directory}` first") from None
        except (ValueError, KeyError, TypeError) as e:
            raise DeployError(f"{path}: unreadable manifest ({e}); fill the wheelhouse again") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_entry(path: Path) -> WheelEntry:
    m = _WHEEL.match(path.name)
    if m is None:
        raise DeployError(f"{path}: not a wheel file name")
    return WheelEntry(path.name, m["name"].replace("_", "-").lower(), m["version"], sha256_file(path),
                      path.stat().st_size)


def verify_offline(directory: Path, spec: WheelhouseSpec, requirements: list[str], progress: Progress) -> None:
    """The requirements resolve from `directory` alone, for the target (nothing installed)."""
    progress(f"checking that {directory} resolves offline for {spec.platform}/Python {spec.python_version}")
    with tempfile.TemporaryDirectory(prefix="q7x2-resolve-") as tmp:
        _pip(["install", "--isolated", "--no-index", "--find-links", str(directory), "--dry-run", "--ignore-installed",
              "--only-binary=:all:", *target_args(spec), "--target", tmp, *requirements],
             f"resolving {directory} offline", progress)


def fill_target_wheelhouse(dest: Path, spec: WheelhouseSpec, *, missing: list[str],
                           progress: Progress = lambda s: None) -> Manifest:
    if dest.exists() and any(dest.iterdir()) and not (dest / MANIFEST).exists():
        raise DeployError(f"{dest} is not empty and holds no {MANIFEST}: give an empty or a new directory")
    cache = prepare_wheelhouse(spec, None, progress=progress)
    stamp = json.loads((cache / _STAMP).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST).unlink(missing_ok=True)  # DIR is incomplete until the new manifest is written
    for old in dest.glob("*.whl"):
        old.unlink()
    link_tree(cache, dest)
    project = sorted(dest.glob(f"{PROJECT_DIST}-*.whl"))
    extras = f"[{spec.extras}]" if spec.extras else ""
    requirements = [*spec.requirements, *(f"{p}{extras}" for p in project[-1:])]
    verify_offline(dest, spec, requirements, progress)
    manifest = Manifest(spec.flavor, spec.platform, spec.python_version,
                        requirements=[*spec.requirements, f"{PROJECT_DIST}{extras}"],
                        wheels=[wheel_entry(p) for p in sorted(dest.glob("*.whl"))],
                        built_from_sdists=list(stamp.get("built_from_sdists", [])), missing=missing)
    staged = dest / f".{MANIFEST}.tmp-{os.getpid()}"
    staged.write_text(manifest.to_json())
    os.replace(staged, dest / MANIFEST)
    return manifest


def check_against_manifest(directory: Path) -> Manifest:
    """Every wheel the manifest lists is there with its sha256 (what was carried in is whole)."""
    manifest = Manifest.load(directory)
    for w in manifest.wheels:
        path = directory / w.file
        if not path.is_file():
            raise DeployError(f"{path}: listed in {MANIFEST} but missing; copy the whole wheelhouse again")
        if path.stat().st_size != w.size or sha256_file(path) != w.sha256:
            raise DeployError(f"{path}: sha256 differs from {MANIFEST}; copy the whole wheelhouse again")
    return manifest
