"""Plans built by hand for executor tests: two "hosts" that are both the local sshd and the
root Docker engine, distinguished by container names, running busybox scripts as steps."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from q7x2_deploy.plan import HostPlan, Mount, Plan, StepPlan
from q7x2_runtime.jobspec import ClusterSpec, Job, JobSpec

TEST_IMAGE = "q7x2-test/busybox:1"


def ensure_test_image() -> str:
    """A tiny image made offline from Debian's static busybox (nothing can be pulled here)."""
    if subprocess.run(["docker", "image", "inspect", TEST_IMAGE], capture_output=True).returncode == 0:
        return TEST_IMAGE
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        busybox = shutil.which("busybox")
        if busybox is None:
            subprocess.run(["apt-get", "download", "busybox-static"], cwd=t, check=True, capture_output=True)
            deb = next(t.glob("busybox-static_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(t / "x")], check=True)
            busybox = str(t / "x" / "bin" / "busybox")
        root = t / "root" / "bin"
        root.mkdir(parents=True)
        shutil.copy2(busybox, root / "busybox")
        for applet in ("sh", "echo", "sleep", "cat", "ls", "true", "false", "seq", "env", "test", "["):
            (root / applet).symlink_to("busybox")
        tar = subprocess.Popen(["tar", "-C", str(t / "root"), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", TEST_IMAGE], stdin=tar.stdout, check=True, capture_output=True)
        tar.wait()
    return TEST_IMAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def megatron_line(it: int, total: int, loss: float) -> str:
    return (f" [2026-11-28 04:00:00] iteration {it:8d}/{total:8d} | consumed samples: {it * 8:12d} | "
            f"elapsed time per iteration (ms): 123.4 | throughput per GPU (TFLOP/s/GPU): 1.5 | "
            f"learning rate: 1.000000E-04 | global batch size:     8 | lm loss: {loss:.6E} | "
            f"loss scale: 1.0 | grad norm: 0.500 | number of skipped iterations:   0 |")


def make_plan(job: str, ssh: dict[str, dict[str, object]], scripts: dict[str, list[tuple[str, str, str]]],
              job_root: Path, *, image: str = TEST_IMAGE, distribution: str = "ssh",
              master_port: int | None = None) -> Plan:
    """ssh: host -> ssh settings; scripts: host -> [(step, phase, sh script)], ranks in dict order."""
    hosts = []
    port = master_port or free_port()
    for rank, (name, steps) in enumerate(scripts.items()):
        job_dir = job_root / name / "jobs" / job
        job_mount = Mount(str(job_dir), "/q7x2", True)
        mount = ["-v", job_mount.option()]
        plans = []
        for step, phase, script in steps:
            cname = f"q7x2-{job}-{step}-{rank}"
            labels = {"q7x2.job": job, "q7x2.phase": phase, "q7x2.step": step, "q7x2.host": name,
                      "q7x2.rank": str(rank)}
            lab = [x for k, v in labels.items() for x in ("--label", f"{k}={v}")]
            argv = ["sh", "-c", script]
            plans.append(StepPlan(step, phase, cname, labels, argv,
                                  ["docker", "run", "-d", "--name", cname, *lab, *mount, image, *argv]))
        hosts.append(HostPlan(name=name, address="127.0.0.1", node_rank=rank, ssh=ssh[name],
                              env={"NODE_RANK": str(rank)}, job_file=str(job_dir / "job.json"),
                              docker_run=["docker", "run", "-d", *mount, image], steps=plans,
                              mounts=[job_mount], is_master=rank == 0))
    spec = JobSpec(job=Job(name=job), cluster=ClusterSpec(nnodes=len(hosts), master_addr="127.0.0.1",
                                                          master_port=port, flavor="cpu"))
    return Plan(job_name=job, image_ref=image, flavor="cpu", distribution=distribution,
                master_addr="127.0.0.1", master_port=port, nnodes=len(hosts), world_size=len(hosts),
                storage="shared", job_spec=spec, hosts=hosts)
