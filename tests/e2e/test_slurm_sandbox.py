"""The job on a real Slurm cluster: `sandbox up 2 --slurm` (munged, slurmctld, two slurmd), the
sample cpu job over both nodes in containers, loss falls, logs from both; a task failing on one
node ends the job on both and `up` names the node; `down` leaves no container and no job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from conftest import build_cpu_image
from e2e_support import cli, cli_background, derive_inventory, loss_curve, wait_for
from tests import isolation

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

TRAIN_ITERS = 30


class SlurmSandbox:
    def __init__(self, cfg, inventory: Path) -> None:  # type: ignore[no-untyped-def]
        self.cfg, self.inventory = cfg, inventory

    def engine(self, i: int) -> docker.DockerClient:
        from q7x2_deploy.sandbox import hosts

        return docker.DockerClient(base_url=f"unix://{hosts.engine_socket(self.cfg.host(i + 1))}", timeout=60)

    def containers(self, job: str) -> list:  # type: ignore[type-arg]
        out = []
        for i in range(2):
            client = self.engine(i)
            try:
                out += client.containers.list(all=True, filters={"label": f"q7x2.job={job}"})
            finally:
                client.close()
        return out

    def squeue(self) -> str:
        from q7x2_deploy.sandbox import slurm
        from q7x2_deploy.sandbox.state import State

        st = State.load(self.cfg.state_file)
        assert st is not None
        r = slurm.host_exec(st.host(1).init_pid or 0, ["squeue", "-h", "-o", "%i %j %T"])
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()


@pytest.fixture(scope="module")
def slurm_sandbox() -> Iterator[SlurmSandbox]:
    import os

    if os.geteuid() != 0:
        pytest.skip("the Slurm sandbox needs root")
    from q7x2_deploy.sandbox import cluster

    name, subnet = isolation.sandbox("slurm", "10.213.9.0/24")
    cfg = cluster.config_for(name, subnet)
    owned = not cluster.status(cfg)["up"]
    inventory = cfg.state_dir / "inventory.slurm.yaml"
    t0 = time.monotonic()
    cluster.up(cfg, 2, slurm=True, inventory=inventory, log=lambda m: print(f"sandbox: {m}"))
    print(f"\nsandbox up 2 --slurm: {time.monotonic() - t0:.1f} s")
    try:
        yield SlurmSandbox(cfg, inventory)
    finally:
        if owned:
            cluster.down(cfg, log=lambda m: print(f"sandbox: {m}"))


@pytest.fixture(scope="module")
def image_ref(slurm_sandbox: SlurmSandbox) -> str:
    """The sandbox inventory's image, present in both node engines. Built and copied engine to
    engine when a node lacks it: pushing 1.6 GB through the registry (gzip) took over half an
    hour on a busy 2-core machine, the copy 8 minutes."""
    import yaml

    from q7x2_deploy.image.base_image import copy_image

    image = yaml.safe_load(slurm_sandbox.inventory.read_text())["image"]
    ref = f"{image['repository']}:{image['tag']}"
    missing = []
    for i in range(2):
        client = slurm_sandbox.engine(i)
        try:
            client.images.get(ref)
        except docker.errors.ImageNotFound:
            missing.append(i)
        finally:
            client.close()
    if missing:
        build_cpu_image(ref, push=False)
        src = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=1800)
        try:
            for i in missing:
                dst = slurm_sandbox.engine(i)
                dst.api.timeout = 1800
                try:
                    copy_image(src, dst, ref)
                finally:
                    dst.close()
        finally:
            src.close()
    return ref


def _inventory(sb: SlurmSandbox, tmp_path: Path, job: str, image_ref: str, port: int, **kw: object) -> Path:
    return derive_inventory(sb.inventory, tmp_path / "inv.yaml", job=job, image_ref=image_ref, port=port, **kw)  # type: ignore[arg-type]


# The later tests train on what the first one prepared (conversion and the dataset take minutes).
PREPARED = "e2e-slurm"


def _prepared(**kw: object) -> dict[str, object]:
    from e2e_support import E2E_ROOT

    root = f"/shared/{E2E_ROOT}/{PREPARED}"
    return {"job__steps__convert": False, "job__steps__preprocess": False,
            "job__paths__mcore_weights": f"{root}/mcore", "job__paths__dataset_prefix": f"{root}/datasets/alpaca", **kw}


def test_sample_job_trains_over_two_slurm_nodes(slurm_sandbox: SlurmSandbox, image_ref: str, tmp_path: Path) -> None:
    import shutil

    from e2e_support import E2E_ROOT

    job = PREPARED
    inv = _inventory(slurm_sandbox, tmp_path, job, image_ref, 6221, train_iters=TRAIN_ITERS)
    cli("down", str(inv), cwd=tmp_path)
    # A checkpoint of an earlier run would make this one resume at its end (nothing to train);
    # the converted weights and the dataset may stay (conversion skips a finished one).
    for sub in ("ckpt", "logs"):
        shutil.rmtree(slurm_sandbox.cfg.shared_dir / E2E_ROOT / job / sub, ignore_errors=True)
    t0 = time.monotonic()
    up = cli("up", str(inv), cwd=tmp_path, timeout=1500)
    took = time.monotonic() - t0
    out = up.stdout + up.stderr
    assert up.returncode == 0, out[-4000:]
    assert "Slurm job" in out and "COMPLETED on sbx-1, sbx-2" in out
    assert "[sbx-1 0] q7x2: prepare: convert starts on sbx-1" in out
    assert "[sbx-2 1] q7x2: train: pretrain starts on sbx-2 (node rank 1" in out
    curve = loss_curve(out)
    assert curve and curve[-1][0] == TRAIN_ITERS, curve[-3:]
    first, last = (sum(v for _, v in part) / len(part) for part in (curve[:3], curve[-3:]))
    assert last < first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    print(f"\nslurm job, submit to COMPLETED: {took:.1f} s; loss {first:.3f} -> {last:.3f}")

    logs = cli("logs", str(inv), cwd=tmp_path, timeout=300)
    assert logs.returncode == 0, logs.stderr
    assert "[sbx-1 0]" in logs.stdout and "[sbx-2 1]" in logs.stdout
    st = cli("status", str(inv), cwd=tmp_path, timeout=300)
    assert st.returncode == 0, st.stderr
    assert "COMPLETED" in st.stdout and f"{TRAIN_ITERS}/{TRAIN_ITERS}" in st.stdout

    down = cli("down", str(inv), cwd=tmp_path, timeout=300)
    assert down.returncode == 0, down.stderr
    assert slurm_sandbox.containers(job) == []
    assert job not in slurm_sandbox.squeue()


def test_a_failing_node_ends_the_job_on_both_and_is_named(slurm_sandbox: SlurmSandbox, image_ref: str, tmp_path: Path) -> None:
    job = "e2e-slurm-fail"
    inv = _inventory(slurm_sandbox, tmp_path, job, image_ref, 6223, train_iters=100_000, **_prepared())
    cli("down", str(inv), cwd=tmp_path)
    log = tmp_path / "up.log"
    proc = cli_background("up", str(inv), cwd=tmp_path, log=log)
    try:
        wait_for(log, "[sbx-2 1]  [", 900, proc)  # rank 1 is training
        client = slurm_sandbox.engine(1)
        try:
            t_kill = time.monotonic()
            client.containers.get(f"q7x2-{job}-pretrain-1").kill()
        finally:
            client.close()
        rc = proc.wait(timeout=180)
        reaction = time.monotonic() - t_kill
        text = log.read_text()
        assert rc != 0, text[-3000:]
        assert "ended FAILED" in text
        assert "pretrain (train) failed on sbx-2 (node rank 1) with exit status 137" in text
        assert [c for c in slurm_sandbox.containers(job) if c.status == "running"] == []  # sbx-1's was stopped too
        assert job not in slurm_sandbox.squeue()
        print(f"\nslurm fail-fast: kill on sbx-2 to `up` exit {reaction:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
        down = cli("down", str(inv), cwd=tmp_path, timeout=300)
        assert down.returncode == 0, down.stderr
        assert slurm_sandbox.containers(job) == []


def test_down_cancels_a_running_job_and_sweeps_its_containers(slurm_sandbox: SlurmSandbox, image_ref: str, tmp_path: Path) -> None:
    job = "e2e-slurm-down"
    inv = _inventory(slurm_sandbox, tmp_path, job, image_ref, 6225, train_iters=100_000, **_prepared())
    cli("down", str(inv), cwd=tmp_path)
    up = cli("up", str(inv), "--detach", cwd=tmp_path, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len([c for c in slurm_sandbox.containers(job) if "pretrain" in c.name]) < 2:
        time.sleep(2)
    assert len(slurm_sandbox.containers(job)) == 2
    t0 = time.monotonic()
    down = cli("down", str(inv), cwd=tmp_path, timeout=300)
    assert down.returncode == 0, down.stderr
    print(f"\nslurm down of a running job: {time.monotonic() - t0:.1f} s")
    assert slurm_sandbox.containers(job) == []
    assert job not in slurm_sandbox.squeue()


@pytest.mark.long  # a second full Slurm job after a requeue; CI's hour keeps the three above
def test_a_requeued_job_resumes_from_its_checkpoint(slurm_sandbox: SlurmSandbox, image_ref: str, tmp_path: Path) -> None:
    """Recovery on Slurm is Slurm's requeue (--requeue, what a node failure triggers): the job
    starts again under the same id, appends to its output file, and resumes from the last save."""
    import shutil

    from e2e_support import E2E_ROOT

    from q7x2_deploy.sandbox import slurm
    from q7x2_deploy.sandbox.state import State

    job = "e2e-slurm-requeue"
    inv = _inventory(slurm_sandbox, tmp_path, job, image_ref, 6227, train_iters=100_000,
                     **_prepared(job__training__save_interval=10))
    cli("down", str(inv), cwd=tmp_path)
    shutil.rmtree(slurm_sandbox.cfg.shared_dir / E2E_ROOT / job, ignore_errors=True)
    log = tmp_path / "up.log"
    proc = cli_background("up", str(inv), cwd=tmp_path, log=log)
    try:
        wait_for(log, "] iteration       12/", 900, proc)
        job_id = log.read_text().split("Slurm job ", 1)[1].split(" ", 1)[0].rstrip(":")
        st = State.load(slurm_sandbox.cfg.state_file)
        assert st is not None
        r = slurm.host_exec(st.host(1).init_pid or 0, ["scontrol", "requeue", job_id])
        assert r.returncode == 0, r.stderr
        wait_for(log, "start point: resume from", 600, proc)
        text = log.read_text()
        assert f"Slurm job {job_id} on sbx-[1-2], master sbx-1:6227, start 1" in text
        assert "[sbx-1 0] q7x2-runtime pretrain: node 0: start point: resume from" in text
        resumed = int(text.split("start point: resume from", 1)[1].split(" at iteration ", 1)[1].split()[0])
        assert resumed > 0 and resumed % 10 == 0  # a checkpoint the first start saved
    finally:
        down = cli("down", str(inv), cwd=tmp_path, timeout=300)
        if proc.poll() is None:
            proc.wait(timeout=120)
        assert down.returncode == 0, down.stderr
        assert slurm_sandbox.containers(job) == []
        assert job not in slurm_sandbox.squeue()
