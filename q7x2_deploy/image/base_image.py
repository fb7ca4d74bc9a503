"""The base image of the cpu flavor, built without any registry.

debootstrap writes a minimal Debian with Python from the machine's own apt mirror, and the
tarball is imported into the engine. The tarball is cached, so later builds take seconds.
`build-image --flavor cpu` uses it when no --base-image is given; the sandbox loads the same
image into its hosts' engines.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from q7x2_runtime.errors import UserError

# The cache the sandbox keeps across `down` (sandbox.config.cache_dir of the default root):
# one rootfs tarball serves builds and sandboxes alike.
CACHE_DIR = Path(os.environ.get("Q7X2_SANDBOX_ROOT", "/var/lib/q7x2-sandbox")) / "cache"

SUITE = "bookworm"
INCLUDE = ("python3", "python3-venv", "ca-certificates")
BASE_IMAGE = f"q7x2/debian-python:{SUITE}"
_CHANGES = [
    "ENV LANG=C.UTF-8",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["/bin/bash"]',
]


def _deb822_mirrors(text: str, suite: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if ("deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split()
                and "main" in fields.get("components", "").split()):
            out += fields.get("uris", "").split()
    return out


def _one_line_mirrors(text: str, suite: str) -> list[str]:
    out = []
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words[3:]:
            out.append(words[1])
    return out


def apt_mirror(suite: str = SUITE, etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for suite (never a name baked into the code)."""
    found: list[str] = []
    for name in sorted(glob.glob(str(etc / "sources.list.d" / "*.sources"))):
        found += _deb822_mirrors(Path(name).read_text(encoding="utf-8", errors="replace"), suite)
    for path in [etc / "sources.list", *sorted(Path(p) for p in glob.glob(str(etc / "sources.list.d" / "*.list")))]:
        if path.exists():
            found += _one_line_mirrors(path.read_text(encoding="utf-8", errors="replace"), suite)
    found = [u for u in found if u.startswith(("http://", "https://", "file:/"))]
    if not found:
        raise UserError(f"no Debian {suite} main mirror in {etc}/sources.list(.d): cannot build the base image")
    return found[0]


def rootfs_tarball(cache: Path | None = None) -> Path:
    return (cache or CACHE_DIR) / f"debian-python-{SUITE}.tar"


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [l.split()[4] for l in f if l.split()[4].startswith(prefix)]


def _remove_tree(path: Path) -> None:
    """Remove a debootstrap target, refusing while anything is still mounted inside it."""
    for mp in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    if _mounts_under(path):
        raise UserError(f"{path} still has mounts inside; unmount them and remove it by hand")
    shutil.rmtree(path, ignore_errors=True)


def _debootstrap() -> str | None:
    # debootstrap lives in /usr/sbin, which a non-login root shell may not have on PATH.
    return shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")


def build_rootfs(tarball: Path, log=print) -> None:
    """debootstrap + tar into the cache (about a minute, once)."""
    debootstrap = _debootstrap()
    if debootstrap is None:
        raise UserError("missing Debian packages: run `apt-get install -y debootstrap`")
    mirror = apt_mirror()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=tarball.parent))
    try:
        log(f"building the base rootfs with debootstrap ({SUITE}, minbase + python3), about a minute")
        t0 = time.monotonic()
        proc = subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={','.join(INCLUDE)}",
             SUITE, str(work / "root"), mirror],
            capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise UserError(f"debootstrap failed: {' | '.join(tail)}")
        root = work / "root"
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (root / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
        os.replace(partial, tarball)
        log(f"base rootfs built in {time.monotonic() - t0:.0f} s: {tarball}")
    finally:
        _remove_tree(work)


def _client(docker_client_or_socket: "docker.DockerClient | str | None") -> tuple[docker.DockerClient, bool]:
    if isinstance(docker_client_or_socket, docker.DockerClient):
        return docker_client_or_socket, False
    url = docker_client_or_socket or "unix:///var/run/docker.sock"
    if url.startswith("/"):
        url = f"unix://{url}"
    try:
        return docker.DockerClient(base_url=url, timeout=600), True
    except docker.errors.DockerException:
        raise UserError(f"no Docker engine answers on {url}; run scripts/install-host-deps.sh (as root)") from None


def ensure_base_image(docker_client_or_socket: "docker.DockerClient | str | None" = None, *,
                      reference: str = BASE_IMAGE, cache: Path | None = None, log=print) -> str:
    """Make sure `reference` exists in the engine (root engine by default); return it.

    Order: already in the engine (instant), cached rootfs tarball (seconds), debootstrap.
    """
    client, owned = _client(docker_client_or_socket)
    try:
        try:
            client.images.get(reference)
            return reference
        except ImageNotFound:
            pass
        except docker.errors.DockerException as e:
            raise UserError(f"the Docker engine failed ({e.__class__.__name__}); run scripts/install-host-deps.sh") from None
        tarball = rootfs_tarball(cache)
        if not tarball.exists():
            build_rootfs(tarball, log=log)
        repo, tag = reference.rsplit(":", 1)
        client.api.import_image_from_file(str(tarball), repository=repo, tag=tag, changes=_CHANGES)
        client.images.get(reference)
        return reference
    finally:
        if owned:
            client.close()


def copy_image(src: docker.DockerClient, dst: docker.DockerClient, reference: str) -> None:
    """`docker save | docker load` between two engines, streamed."""
    # get_image by reference keeps exactly that name (save(named=True) picks the image's first tag).
    dst.images.load(src.api.get_image(reference))
