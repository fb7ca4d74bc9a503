"""An offline wheelhouse on the build machine: every wheel the image installs, so the build
inside the engine needs no network (containers there cannot verify the registries' TLS).

`pip wheel` uses the machine's own pip configuration (index, find-links, constraints). The
third-party wheels are cached under a key of what decides them (requirements, pyproject,
target); only this project's own wheel is rebuilt each time, so a second build is fast.
"""

from __future__ import annotations

import hashlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from q7x2_deploy import __version__
from q7x2_deploy.errors import DeployError

PROJECT_DIST = "q7x2_deploy"  # wheel file name prefix of this project
_STAMP = ".q7x2-wheelhouse.json"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WheelhouseSpec:
    flavor: str
    requirements: list[str]  # third-party requirements beyond the project's own
    extras: str = "runtime"
    # For a target unlike the build machine (e.g. cp38 aarch64 Ascend hosts): `pip download
    # --only-binary=:all:` with these, instead of `pip wheel`.
    python_version: str | None = None
    platform: str | None = None
    extra_find_links: list[Path] = field(default_factory=list)


def project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise DeployError("build-image needs q7x2-deploy's source checkout (pyproject.toml not found "
                          f"beside {root / 'q7x2_deploy'})")
    return root


def default_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "q7x2" / "wheelhouse"


def cache_key(spec: WheelhouseSpec, pyproject: bytes) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([spec.flavor, spec.requirements, spec.extras, spec.python_version, spec.platform,
                         sorted(str(p) for p in spec.extra_find_links), sys.version_info[:2]]).encode())
    h.update(pyproject)
    return h.hexdigest()[:16]


class PipFailed(DeployError):
    def __init__(self, message: str, output: list[str]) -> None:
        super().__init__(message)
        self.output = output


def _pip(args: list[str], what: str, progress: Progress, env: dict[str, str] | None = None) -> list[str]:
    """pip with the machine's own configuration (index, find-links, constraints); its output."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    output: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        output.append(line)
        if line.startswith(("Saved", "Collecting", "Building wheel", "File was already")):
            progress(line)
    if proc.wait() != 0:
        tail = [ln for ln in output if ln.strip() and not ln.startswith("WARNING: Location")][-3:]
        raise PipFailed(f"{what} failed (pip exited {proc.returncode}): {' | '.join(tail)}", output)
    return output


_SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".q7x2", ".pytest_cache",
    ".hypothesis", "tests", "bench", "*.pyc",
)


def build_project_wheel(dest: Path, progress: Progress) -> Path:
    """This project's wheel, built from a clean copy of the sources: an in-tree build would
    leave build/ behind, and a stale build/lib can smuggle deleted modules into the wheel."""
    progress(f"building the q7x2-deploy {__version__} wheel")
    with tempfile.TemporaryDirectory(prefix="q7x2-src-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        shutil.copytree(project_root(), src, ignore=_SOURCE_IGNORE, symlinks=True)
        # Fixed zip timestamps: unchanged sources give a byte-identical wheel, so the engine's
        # layer cache (which hashes the build context) makes a rebuild nearly free.
        _pip(["wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(src)],
             "building q7x2-deploy's wheel", progress, env={"SOURCE_DATE_EPOCH": "315532800"})
        built = sorted(out.glob(f"{PROJECT_DIST}-*.whl"))
        if not built:
            raise DeployError(f"pip wheel left no {PROJECT_DIST} wheel in {out}")
        for old in dest.glob(f"{PROJECT_DIST}-*.whl"):
            if old.name != built[-1].name:
                old.unlink(missing_ok=True)
        # Renamed into place: a build reading the wheelhouse meanwhile sees the old or the new
        # file, never half of one.
        staged = dest / f".{built[-1].name}.tmp-{os.getpid()}"
        shutil.copyfile(built[-1], staged)
        os.replace(staged, dest / built[-1].name)
    return dest / built[-1].name


def prepare_wheelhouse(spec: WheelhouseSpec, directory: Path | None = None,
                       progress: Progress = lambda s: None) -> Path:
    """A directory holding every wheel for `spec`; reused when nothing that decides it changed."""
    pyproject = (project_root() / "pyproject.toml").read_bytes()
    key = cache_key(spec, pyproject)
    wh = directory or default_cache_dir() / f"{spec.flavor}-{key}"
    wh.mkdir(parents=True, exist_ok=True)
    # One build at a time per wheelhouse: two `pip wheel -w` into one directory race.
    with open(wh / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fill(spec, wh, key, progress)


def _fill(spec: WheelhouseSpec, wh: Path, key: str, progress: Progress) -> Path:
    project_wheel = build_project_wheel(wh, progress)
    stamp = wh / _STAMP
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        progress(f"wheelhouse {wh} is up to date")
        return wh
    stamp.unlink(missing_ok=True)
    wanted = [*spec.requirements, f"{project_wheel}[{spec.extras}]" if spec.extras else str(project_wheel)]
    links = [x for p in [wh, *spec.extra_find_links] for x in ("--find-links", str(p))]
    built: list[str] = []
    if spec.python_version or spec.platform:
        built = download_for_target(spec, wh, wanted, links, progress)
    else:
        # `pip wheel` saves ready wheels and builds the few sdists, so everything is a wheel.
        _pip(["wheel", *links, "-w", str(wh), *wanted], "filling the wheelhouse", progress)
    stamp.write_text(json.dumps({"key": key, "requirements": wanted, "built_from_sdists": built}))
    return wh


def target_args(spec: WheelhouseSpec) -> list[str]:
    return [*(["--python-version", spec.python_version] if spec.python_version else []),
            *(["--platform", spec.platform] if spec.platform else [])]


# A requirement with no wheel for the target; pip's words.
_NO_WHEEL = re.compile(r"No matching distribution found for (\S+)")
_MAX_SOURCE_BUILDS = 30


def download_for_target(spec: WheelhouseSpec, wh: Path, wanted: list[str], links: list[str],
                        progress: Progress) -> list[str]:
    """`pip download --only-binary=:all:` for the target platform and Python. A requirement
    published only as an sdist is built here into a wheel, and kept only when that wheel is
    pure Python (py3-none-any: the same file on every platform); then the download is retried.
    An sdist that builds a platform wheel here cannot serve another platform: that is an error
    naming it. Returns the wheels built here."""
    built: list[str] = []
    for _ in range(_MAX_SOURCE_BUILDS):
        try:
            _pip(["download", "--only-binary=:all:", *target_args(spec), *links, "-d", str(wh), *wanted],
                 "downloading the wheelhouse", progress)
            return built
        except PipFailed as e:
            missing = next((m.group(1) for ln in e.output if (m := _NO_WHEEL.search(ln))), None)
            if missing is None or missing in built:
                raise
            built.append(missing)
            build_pure_wheel(missing, wh, spec, progress)
    raise DeployError(f"more than {_MAX_SOURCE_BUILDS} requirements without wheels: {', '.join(built)}")


def build_pure_wheel(requirement: str, wh: Path, spec: WheelhouseSpec, progress: Progress) -> Path:
    target = f"{spec.platform or 'any platform'}/Python {spec.python_version or 'any'}"
    progress(f"{requirement}: no wheel for {target}; building one from its sdist")
    with tempfile.TemporaryDirectory(prefix="q7x2-sdist-") as tmp:
        try:
            _pip(["wheel", "--no-deps", "--no-binary=:all:", "-w", tmp, requirement],
                 f"building {requirement} from its sdist", progress)
        except PipFailed as e:
            raise DeployError(f"{requirement} has no wheel for {target} and its sdist does not build here "
                              f"({e}); build a wheel on a target host and pass --find-links DIR") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DeployError(f"building {requirement} from its sdist left {len(wheels)} wheels")
        wheel = wheels[0]
        if not wheel.name.endswith("-none-any.whl") or not wheel.name.split("-")[-3].startswith("py"):
            raise DeployError(f"{requirement} has no wheel for {target}, and its sdist builds a platform wheel "
                              f"({wheel.name}); build it on a target host and pass --find-links DIR")
        staged = wh / f".{wheel.name}.tmp-{os.getpid()}"
        shutil.copyfile(wheel, staged)
        os.replace(staged, wh / wheel.name)
        return wh / wheel.name


def link_tree(src: Path, dest: Path, *, only_prefix: str | None = None, exclude_prefix: str | None = None) -> None:
    """Copy src's wheels into dest as hard links where possible (the wheelhouse is large).
    A link shares its bytes with the cache: replace a file in dest, never write into it."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if only_prefix is not None and not f.name.startswith(f"{only_prefix}-"):
            continue
        if exclude_prefix is not None and f.name.startswith(f"{exclude_prefix}-"):
            continue
        if f.is_file() and f.suffix == ".whl":
            try:
                os.link(f, dest / f.name)
            except OSError:
                shutil.copy2(f, dest / f.name)
