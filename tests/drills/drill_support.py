"""Recovery drills on a sandbox of their own: 3 hosts (2 ranks + 1 spare), the cpu image already
on every host, the sample model, a small save_interval. A drill runs `up` as the operator does
(a subprocess), injects a real fault once training is past a given iteration, and returns what
happened: exit code, output, events.jsonl, and when the fault was injected."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from q7x2_deploy.executor.metrics import losses
from tests import isolation

NAME, SUBNET = isolation.sandbox("q7x2r", "10.213.6.0/24")
IMAGE = isolation.tag("q7x2/qwen25-cpu:drill")
ROOT = "q7x2-drills"  # every drill job writes under /shared/q7x2-drills/<job>
TRAIN_ITERS = 40
SAVE_INTERVAL = 10
FAULT_AFTER = 25  # inject once this iteration's line is out: the last complete save is 20
REFERENCE_JOB = "drill-ref"
# Q7X2_DRILLS_KEEP=1: reuse a drill sandbox that is up and leave it up (deleting the hosts' disks
# with the image on them takes minutes); `q7x2-deploy sandbox --name q7x2r<slot> down` ends it.
KEEP_ENV = "Q7X2_DRILLS_KEEP"
ASCEND_DEVICES = 1
_SAVED = re.compile(r"saved checkpoint at iteration\s+(\d+)")


@dataclass
class Drills:
    cfg: object  # SandboxConfig
    cluster: object  # the q7x2_deploy.sandbox.cluster module
    inventory: Path  # the sandbox's own inventory (3 hosts)
    shared: Path
    hosts: list[dict]
    reference: dict[int, float] = field(default_factory=dict)  # iteration -> loss, uninterrupted

    def engine(self, i: int):  # type: ignore[no-untyped-def]
        import docker

        return docker.DockerClient(base_url=f"unix://{self.hosts[i]['engine_socket']}", timeout=120)

    def ssh(self, i: int, *argv: str) -> str:
        """Run a command on host i (its own pid namespace: pids from its engine mean something
        there, not on this machine)."""
        st = self.cluster.status(self.cfg)  # type: ignore[attr-defined]
        r = subprocess.run(["ssh", "-i", st["identity"], "-o", f"UserKnownHostsFile={st['known_hosts']}",
                            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                            f"root@{self.address(i)}", shlex.join(argv)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def address(self, i: int) -> str:
        return str(self.hosts[i]["address"])

    def name(self, i: int) -> str:
        return str(self.hosts[i]["name"])


def build_image(ref: str) -> None:
    from q7x2_deploy.image.base_image import ensure_base_image

    base = ensure_base_image(log=lambda _m: None)
    r = subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", "build-image", "--flavor", "cpu", "--tag", ref,
                        "--base-image", base], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"build-image failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def drill_sandbox() -> Iterator[Drills]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox cluster needs root")
    from q7x2_deploy.sandbox import cluster
    from q7x2_deploy.sandbox.config import SandboxConfig

    cfg = SandboxConfig(name=NAME, subnet=SUBNET)
    keep = os.environ.get(KEEP_ENV) == "1"
    st = cluster.status(cfg)
    ready = st["up"] and len(st["hosts"]) == 3 and st.get("ascend_devices") == ASCEND_DEVICES and all(h["running"] and not h["cut"] for h in st["hosts"])
    if not (keep and ready):
        cluster.down(cfg, log=lambda _m: None)  # leftovers of an interrupted run
    try:
        inv = cfg.state_dir / "inventory.sandbox.yaml"
        if not (keep and ready):
            # One simulated NPU per host: the cpu runs ignore it, drill 6's npu-smi reports on it.
            cluster.up(cfg, 3, inventory=inv, ascend_devices=ASCEND_DEVICES, log=lambda _m: None)
        build_image(IMAGE)
        st = cluster.status(cfg)
        d = Drills(cfg, cluster, Path(st["inventory"]), Path(st["shared"]), st["hosts"])
        # The image on all three hosts up front (the targets are measured with the image present),
        # streamed engine to engine by the docker CLI, which has no read timeout to trip on a busy
        # machine; a host that has this very image already is skipped.
        want = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", IMAGE], capture_output=True,
                              text=True, check=True).stdout.strip()
        for h in d.hosts:
            sock = f"unix://{h['engine_socket']}"
            have = subprocess.run(["docker", "-H", sock, "image", "inspect", "--format", "{{.Id}}", IMAGE],
                                  capture_output=True, text=True).stdout.strip()
            if have != want:
                subprocess.run(f"docker save {shlex.quote(IMAGE)} | docker -H {shlex.quote(sock)} load -q",
                               shell=True, check=True, capture_output=True, timeout=1800)
        yield d
    finally:
        if not keep:
            cluster.down(cfg, log=lambda _m: None)


def _write_inventory(d: Drills, dest: Path, job: str, port: int, *, spares: int = 1, hosts: int = 2,
                     train_iters: int = TRAIN_ITERS, recovery: dict | None = None, **training: object) -> Path:
    data = yaml.safe_load(d.inventory.read_text())
    everyone = data["hosts"]
    data["hosts"] = everyone[:hosts]
    data["spares"] = everyone[hosts:hosts + spares]
    data["job"]["name"] = job
    data["master"] = {"port": port}  # the master is rank 0, wherever it moves
    repo, _, tag = IMAGE.rpartition(":")
    data["image"].update(repository=repo, tag=tag, distribution="ssh")
    root = f"/shared/{ROOT}/{job}"
    # The reference run prepares (convert, preprocess: minutes on a busy machine); the drills
    # train from what it prepared, since only the train phase recovers.
    prepared = f"/shared/{ROOT}/{REFERENCE_JOB}"
    data["job"]["paths"].update(mcore_weights=f"{prepared}/mcore", dataset_prefix=f"{prepared}/datasets/alpaca",
                                save_dir=f"{root}/ckpt", logs=f"{root}/logs")
    if job != REFERENCE_JOB:
        data["job"]["steps"] = {"convert": False, "preprocess": False}
    data["job"]["training"].update(train_iters=train_iters, save_interval=SAVE_INTERVAL, log_interval=1, **training)
    data["job"]["recovery"] = {"max_restarts": 3, "hang_timeout_minutes": 10, "host_wait_minutes": 2,
                               **(recovery or {})}
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class Ctx:
    """What a fault needs: the drill sandbox, the run's log, its job."""

    d: Drills
    job: str
    log: Path
    proc: subprocess.Popen[bytes]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 600, after: int = 0) -> int:
        """Waits for a regex in the output after offset `after`; returns the offset past it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.text(), after)
            if m:
                return m.end()
            if self.proc.poll() is not None:
                raise AssertionError(f"up exited {self.proc.returncode} before {pattern!r}:\n{self.text()[-4000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen within {timeout}s:\n{self.text()[-4000:]}")

    def container(self, i: int, rank: int):  # type: ignore[no-untyped-def]
        return self.d.engine(i).containers.get(f"q7x2-{self.job}-pretrain-{rank}")


@dataclass
class Run:
    rc: int
    text: str
    events: list[dict]
    fault_at: float  # wall clock of the injection
    fault_offset: int  # output length when the fault was injected
    workdir: Path

    def curve(self) -> list[tuple[int, float]]:
        return [(it, loss) for ln in self.text.splitlines() if ln.startswith("[") and "] " in ln
                for it, loss in losses([ln.split("] ", 1)[1]])]

    def last_save_before_fault(self) -> int:
        saved = [int(m.group(1)) for m in _SAVED.finditer(self.text[:self.fault_offset])]
        return max(saved, default=0)


def iteration_line(it: int) -> str:
    return rf"\] +iteration +{it}/"


def run_drill(d: Drills, tmp_path: Path, job: str, port: int, fault: Callable[[Ctx], None], *,
              timeout: float = 900, fault_after: int = FAULT_AFTER, **inventory: object) -> Run:
    inv = _write_inventory(d, tmp_path / "inv.yaml", job, port, **inventory)  # type: ignore[arg-type]
    cli("down", str(inv), cwd=tmp_path)
    shutil.rmtree(d.shared / ROOT / job, ignore_errors=True)
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "q7x2_deploy.cli", "up", str(inv)], cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT)
    ctx = Ctx(d, job, log, proc)
    try:
        ctx.wait_for(iteration_line(fault_after), timeout=timeout)
        offset = len(ctx.text())
        fault_at = time.time()
        fault(ctx)
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events_file = tmp_path / ".q7x2" / "runs" / job / "events.jsonl"
    events = [json.loads(x) for x in events_file.read_text().splitlines()] if events_file.exists() else []
    run = Run(rc, log.read_text(errors="replace"), events, fault_at, offset, tmp_path)
    cli("down", str(inv), cwd=tmp_path)
    return run


def reference_losses(d: Drills, tmp_path: Path) -> dict[int, float]:
    """The loss of every iteration of an uninterrupted run of the same job."""
    inv = _write_inventory(d, tmp_path / "inv.yaml", REFERENCE_JOB, 6301, spares=0)
    shutil.rmtree(d.shared / ROOT / REFERENCE_JOB, ignore_errors=True)
    r = cli("up", str(inv), cwd=tmp_path, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    curve = dict(Run(0, r.stdout, [], 0.0, 0, tmp_path).curve())
    assert sorted(curve) == list(range(1, TRAIN_ITERS + 1)), sorted(curve)
    cli("down", str(inv), cwd=tmp_path)
    return curve


def assert_recovered(run: Run, reference: dict[int, float], *, restarts: int = 1, last_save: int | None = None) -> dict:
    """Finished every iteration with exit 0, resumed from the last complete save (`last_save`,
    else the last one before the fault, 20), and trained the same losses after the resume as
    the uninterrupted run."""
    assert run.rc == 0, run.text[-5000:]
    done = [e for e in run.events if not e.get("gave_up")]
    assert len(done) == restarts and not any(e.get("gave_up") for e in run.events), run.events
    ev = done[0]
    if last_save is None:
        assert run.last_save_before_fault() == 20, run.text[-3000:]
    assert ev["resume_iteration"] == (last_save if last_save is not None else 20), (ev, run.text[-3000:])
    restarted = run.text.index("starting the train phase again", run.fault_offset)
    after = run.text[restarted:]
    resumed = [(it, loss) for ln in after.splitlines() if ln.startswith("[") and "] " in ln
               for it, loss in losses([ln.split("] ", 1)[1]])]
    assert [it for it, _ in resumed] == list(range(ev["resume_iteration"] + 1, TRAIN_ITERS + 1)), resumed
    for it, loss in resumed:
        assert loss == reference[it], f"iteration {it}: {loss} after the resume, {reference[it]} uninterrupted"
    assert ev["iterations_lost"] == ev["last_iteration"] - ev["resume_iteration"]
    assert ev["seconds_until_training"] is not None
    return ev
