"""Build, tag and push the image with the local Docker engine (docker SDK), streaming progress.

Registry credentials come only from the operator's docker config (what `docker login` wrote);
the SDK reads them itself, so they never pass through the inventory, argv or our logs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from q7x2_deploy.errors import DeployError

Progress = Callable[[str], None]


def docker_client() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise DeployError(f"local Docker engine not reachable ({e}); start dockerd or set DOCKER_HOST") from e


def image_present(client: Any, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _consume_build(stream: Iterable[dict[str, Any]], progress: Progress) -> str:
    image_id = ""
    tail: list[str] = []
    for chunk in stream:
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            raise DeployError(f"image build failed: {detail.strip()} (last output: {' | '.join(tail[-3:])})")
        if "stream" in chunk:
            for line in chunk["stream"].splitlines():
                if line.strip():
                    tail = (tail + [line.strip()])[-5:]
                    progress(line.rstrip())
        if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    return image_id


def build_image(context: Path, ref: str, progress: Progress = lambda s: None, *, client: Any = None) -> str:
    """Build `context` as `ref`; returns the image ID. Never pulls: the base must be local."""
    client = client or docker_client()
    stream = client.api.build(path=str(context), tag=ref, rm=True, forcerm=True, pull=False, decode=True)
    image_id = _consume_build(stream, progress)
    if not image_id:
        image_id = client.images.get(ref).id
    return image_id


def push_image(ref: str, progress: Progress = lambda s: None, *, client: Any = None) -> None:
    client = client or docker_client()
    repository, _, tag = ref.rpartition(":")
    if "/" in tag or not repository:  # `host:port/name` without a tag
        repository, tag = ref, "latest"
    last_status = ""
    for chunk in client.images.push(repository, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise DeployError(f"push of {ref} failed: {chunk['error'].strip()} "
                              "(log in with `docker login` on this machine; credentials come from its docker config)")
        status = chunk.get("status", "")
        if status and status != last_status and "id" not in chunk:
            progress(status)
        last_status = status
