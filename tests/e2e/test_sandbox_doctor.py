"""`check --deep` on the session sandbox: doctor runs in a container of the job's image on
every host; a host whose image holds another version than the image was built with (here:
transformers' metadata changed in place on host 1, committed under the same reference) fails
the preflight, named, with doctor's line, while a plain `check` does not look."""

from __future__ import annotations

import docker
import pytest

from q7x2_deploy.image.base_image import copy_image
from tests import isolation
from conftest import build_cpu_image
from e2e_support import cli, derive_inventory

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]
PORT = 6240 + isolation.slot()


@pytest.fixture(scope="module")
def image_ref(sandbox_cluster) -> str:  # type: ignore[no-untyped-def]
    ref = isolation.tag("q7x2-test/qwen25-cpu:deep")
    build_cpu_image(ref, push=False)
    local = docker.from_env(timeout=600)
    for i in range(len(sandbox_cluster.hosts)):
        copy_image(local, sandbox_cluster.engine(i), ref)
    return ref


def _tamper(engine, ref: str) -> None:  # type: ignore[no-untyped-def]
    """What a hand-made change to an image looks like: another version installed, same tag."""
    script = ("sed -i 's/^Version: .*/Version: 4.0.0/' "
              "/opt/q7x2/lib/python3*/site-packages/transformers-*.dist-info/METADATA")
    # Through the image's own entrypoint (it execs the command), so the committed image keeps it.
    c = engine.containers.create(ref, command=["sh", "-c", script], network_mode="none")
    try:
        c.start()
        assert c.wait(timeout=120)["StatusCode"] == 0, c.logs()
        repo, _, tag = ref.rpartition(":")
        c.commit(repository=repo, tag=tag)
    finally:
        c.remove(force=True)


def test_check_deep_runs_doctor_everywhere(sandbox_cluster, image_ref: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inv = derive_inventory(sandbox_cluster.inventory, tmp_path / "inv.yaml", job="e2e-deep", image_ref=image_ref,
                           port=PORT, distribution="ssh")
    r = cli("check", str(inv), "--deep", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for h in sandbox_cluster.hosts:
        assert f"{h.name}: doctor: 8 versions match the image's pins (Python 3.11" in r.stdout, r.stdout

    _tamper(sandbox_cluster.engine(1), image_ref)
    try:
        r = cli("check", str(inv), cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr  # without --deep nothing reads the versions
        r = cli("check", str(inv), "--deep", cwd=tmp_path, timeout=600)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        bad, good = sandbox_cluster.hosts[1].name, sandbox_cluster.hosts[0].name
        assert f"{bad}: doctor: transformers: 4.0.0 installed, pinned " in out, out
        assert f"{good}: doctor: 8 versions match" in out and f"{good}: doctor: transformers" not in out, out
        assert "preflight failed on 1 host(s)" in out, out
    finally:
        copy_image(docker.from_env(timeout=600), sandbox_cluster.engine(1), image_ref)
