"""The Slurm job on its cluster: submit, follow, logs, status and down, over the SSH transport.

Every Slurm command runs on the login host (sbatch, squeue, sacct or scontrol, scancel); the job's
output file is read there too, so its directory must be one the batch node shares with the login
host (home directories are, on most clusters). Containers are not Slurm's processes: `down`
removes the job's labeled containers on its nodes over SSH after scancel.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from q7x2_deploy.backends.slurm.script import SlurmJob
from q7x2_deploy.errors import DeployError
from q7x2_deploy.transport.factory import ssh_factory
from q7x2_deploy.backends.docker_cli import DockerCLI
from q7x2_deploy.runs.rundir import run_dir
from q7x2_deploy.inventory import HostSpec, Inventory
from q7x2_deploy.plan import HostPlan
from q7x2_deploy.transport.base import Transport

POLL_S = 2.0
RECORD_FILE = "slurm.json"
# States in which a job still holds (or waits for) its nodes.
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING", "STAGE_OUT"}
_LABELED = re.compile(r"^\s*([0-9]+): (.*)$")
_STEP_FAILED = re.compile(r"q7x2: (\w+): (\w+) failed on (\S+) \(node rank ([0-9]+)\): exit status ([0-9]+)")
_SRUN_TASK_EXIT = re.compile(r"srun: error: (\S+): task ([0-9]+): Exited with exit code ([0-9]+)")


def _transport(name: str, address: str, inv: Inventory, spec: HostSpec | None, accept_new: bool) -> Transport:
    """Logged in to exactly as the SSH fan-out logs in to a host (ssh config, jump hosts, keys)."""
    ssh = inv.ssh_target(spec or HostSpec.model_construct(name=name, address=address, ssh=None))
    target = HostPlan(name=name, address=address, node_rank=0, ssh=ssh.model_dump(), env={}, job_file="", docker_run=[])
    return ssh_factory(accept_new)(target)


def login_transport(inv: Inventory, accept_new: bool = False) -> Transport:
    """The login host: a host of hosts[] by name (its address and SSH settings), or an address."""
    login = inv.slurm().login
    assert login is not None  # validation requires it with kind slurm
    spec = inv.host_named(login)
    return _transport(login, spec.address if spec else login, inv, spec, accept_new)


def node_transport(inv: Inventory, node: str, accept_new: bool = False) -> Transport:
    """A node of the allocation: its hosts[] entry when listed, else its Slurm name as the address."""
    spec = inv.host_named(node)
    return _transport(node, spec.address if spec else node, inv, spec, accept_new)


@dataclass
class JobState:
    job_id: str
    state: str  # RUNNING, COMPLETED, FAILED, CANCELLED, ... or UNKNOWN once Slurm forgot it
    nodes: list[str] = field(default_factory=list)
    exit_code: int | None = None
    elapsed: str | None = None
    reason: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _record_path(job: str) -> Path:
    return run_dir(job) / RECORD_FILE


def save_record(job: SlurmJob, job_id: str, login: str) -> None:
    path = _record_path(job.job_name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"job_id": job_id, "login": login, "output": job.output_file(job_id),
                               "slurm_name": job.slurm_name}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_record(job: str) -> dict[str, str] | None:
    try:
        data = json.loads(_record_path(job).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def active_job_ids(t: Transport, job: SlurmJob) -> list[str]:
    """This user's queued or running jobs of this name (the job's name is its Slurm name)."""
    r = t.check(["squeue", "-h", "--me", "-n", job.slurm_name, "-o", "%i"])
    return [x for x in r.stdout.split() if x]


def hostnames(t: Transport, nodelist: str) -> list[str]:
    if not nodelist or nodelist in ("(null)", "None"):
        return []
    return t.check(["scontrol", "show", "hostnames", nodelist]).stdout.split()


def _scontrol_fields(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))  # type: ignore[misc]


def job_state(t: Transport, job_id: str) -> JobState:
    """From squeue while the job is known to the controller (scontrol keeps ended jobs for
    MinJobAge), then from sacct where accounting is kept."""
    r = t.run(["scontrol", "-o", "show", "job", job_id])
    if r.ok and r.stdout.strip():
        f = _scontrol_fields(r.stdout)
        code = f.get("ExitCode", "")
        exit_code = int(code.split(":")[0]) if code.split(":")[0].isdigit() else None
        return JobState(job_id, f.get("JobState", "UNKNOWN"), hostnames(t, f.get("NodeList", "")), exit_code,
                        f.get("RunTime"), f.get("Reason") if f.get("Reason") not in (None, "None") else None)
    r = t.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode,NodeList,Elapsed"])
    rows = [line.split("|") for line in r.stdout.splitlines() if line.count("|") == 3] if r.ok else []
    if rows:
        state, code, nodelist, elapsed = rows[0]
        first = code.split(":")[0]
        return JobState(job_id, state.split()[0], hostnames(t, nodelist), int(first) if first.isdigit() else None, elapsed)
    return JobState(job_id, "UNKNOWN")


def submit(t: Transport, job: SlurmJob, script: str) -> str:
    """sbatch the script from stdin; the Slurm job id. Refused while the job is queued or running."""
    running = active_job_ids(t, job)
    if running:
        raise DeployError(f"job {job.job_name} is already queued or running on Slurm as job {', '.join(running)}; "
                          f"follow it with `logs -f` or stop it with `down`")
    out_dir = job.output.rsplit("/", 1)[0] if "/" in job.output else None
    if out_dir:
        t.check(["mkdir", "-p", "--", out_dir])
    r = t.check(["sbatch", "--parsable"], stdin=script.encode("utf-8"))
    job_id = r.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise DeployError(f"sbatch answered {r.stdout.strip()!r}, not a job id", host=t.host)
    return job_id


class OutputFollower:
    """The job's output file, followed on the login host (`tail -F`), each line tagged with the
    host and rank of the task that printed it (srun --label gives the task number; one task per
    node, so it is the node rank)."""

    def __init__(self, t: Transport, path: str, on_line: Callable[[str, str, str], None]) -> None:
        self.t, self.path, self.on_line = t, path, on_line
        self.nodes: list[str] = []
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tag(self, raw: str) -> None:
        self.lines.append(raw)
        m = _LABELED.match(raw)
        if m:
            rank = int(m.group(1))
            host = self.nodes[rank] if rank < len(self.nodes) else f"node{rank}"
            self.on_line(host, str(rank), m.group(2))
        else:
            self.on_line("slurm", "-", raw)

    def start(self, follow: bool = True) -> None:
        argv = ["tail", "-n", "+1", *(["-F"] if follow else []), "--", self.path]

        def run() -> None:
            self.t.stream(argv, self._tag, stop=self._stop)

        if follow:
            self._thread = threading.Thread(target=run, daemon=True)
            self._thread.start()
        else:
            run()

    def stop(self, settle_s: float = 1.5) -> None:
        """Stop once the file has stopped growing (the last lines reach us after the job ends)."""
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < settle_s:
            if len(self.lines) != seen:
                seen, quiet_since = len(self.lines), time.monotonic()
            time.sleep(0.2)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def failure_summary(lines: list[str]) -> str | None:
    """Which node and step failed, from the tasks' own lines (and srun's, which name the node)."""
    for raw in lines:
        m = _STEP_FAILED.search(raw)
        if m:
            phase, step, node, rank, code = m.groups()
            return f"{step} ({phase}) failed on {node} (node rank {rank}) with exit status {code}"
    for raw in lines:
        m = _SRUN_TASK_EXIT.search(raw)
        if m:
            node, task, code = m.groups()
            return f"task {task} failed on {node} with exit status {code}"
    return None


def wait_until_gone(t: Transport, job_ids: list[str], timeout_s: float = 60) -> list[str]:
    """Job ids still queued or running after timeout_s."""
    deadline = time.monotonic() + timeout_s
    left = job_ids
    while left and time.monotonic() < deadline:
        left = [j for j in left if job_state(t, j).active]
        if left:
            time.sleep(0.5)
    return left


def sweep_node(t: Transport, job_name: str) -> int:
    """Remove the job's containers on one node (the fan-out's `down`, by the same label); how many."""
    return DockerCLI(t).remove_job(job_name)
