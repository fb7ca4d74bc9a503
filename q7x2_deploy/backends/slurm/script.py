"""Inventory -> the sbatch script of the job: one srun per phase, one task per node.

The container each task starts is the one the SSH plan starts (`plan.container_options`): the
same options, environment, mounts and image; what only the allocation knows at run time (node
rank, master, the step's NPUs, the Slurm job id) the task adds from Slurm's environment. Every
inventory value reaches the script as a shell-quoted word (shlex), never as shell text.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from q7x2_deploy.inventory import HostSpec, Inventory, InventoryError
from q7x2_deploy.plan import container_options
from q7x2_deploy.resources import template_env, templates_dir
from q7x2_deploy.scheduler_spec import gres_count
from q7x2_runtime.jobspec import ClusterSpec, JobSpec
from q7x2_runtime.safe_text import MAX_ARG_STRLEN
from q7x2_runtime.steps import JOB_FILE_IN_CONTAINER, convert_argv, preprocess_argv, pretrain_argv

# The job spec's master address: each node's container gets the real one (the allocation's first
# node) as MASTER_ADDR, which the runtime takes over the job file's.
MASTER_FROM_ALLOCATION = "first-node-of-the-slurm-allocation"
_NPU_DEVICE = re.compile(r"/dev/davinci[0-9]+")

_ENV = template_env()


@dataclass(frozen=True)
class SlurmStep:
    name: str  # convert | preprocess | pretrain
    argv: list[str]  # docker: run options, image, command; none: K=V..., command


@dataclass(frozen=True)
class SlurmPhase:
    name: str  # prepare | train
    srun: list[str]  # the srun argv up to the task's command
    steps: list[SlurmStep] = field(default_factory=list)

    @property
    def where(self) -> str:
        return "the first node" if "--nodes=1" in self.srun else "every node"


@dataclass(frozen=True)
class SlurmJob:
    job_name: str  # the inventory's job.name
    slurm_name: str  # sbatch --job-name
    nodes: int
    npus_per_node: int
    flavor: str
    image_ref: str
    runner: str  # docker | none
    container_prefix: str
    master_port: int
    job_dir: str  # on every node
    job_spec: JobSpec
    sbatch_options: list[str]
    output: str  # sbatch --output, %j = the Slurm job id
    phases: list[SlurmPhase]

    def task_args(self) -> list[str]:
        npus = self.npus_per_node if self.flavor == "ascend" else 0
        return [self.job_name, self.container_prefix, self.runner, str(npus), self.job_dir]

    def job_spec_json(self) -> str:
        """The job spec on one line (the script passes it to every task as one argument)."""
        return json.dumps(self.job_spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def output_file(self, slurm_job_id: str) -> str:
        return self.output.replace("%x", self.slurm_name).replace("%j", slurm_job_id)


def _static_env(inv: Inventory, nnodes: int) -> dict[str, str]:
    """launch_env's values that do not depend on the node (NODE_RANK and MASTER_ADDR do)."""
    job, npn = inv.job, inv.job.parallelism.npus_per_node
    env: dict[str, str] = dict(job.env)
    if inv.image.flavor == "ascend":
        env.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
        env["ASCEND_RT_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(npn))  # --device numbers them 0..N-1
    env.update({"NNODES": str(nnodes), "NPUS_PER_NODE": str(npn), "MASTER_PORT": str(inv.master.port),
                "WORLD_SIZE": str(nnodes * npn)})
    return dict(sorted(env.items()))


def _docker_options(inv: Inventory, env: dict[str, str], job_dir: str) -> list[str]:
    """The SSH plan's container options without its NPUs: a Slurm step's come from its allocation."""
    placeholder = HostSpec.model_construct(name="slurm-node", address="slurm-node", devices=None, env={}, nic=None, node_rank=None, ssh=None)  # no devices of its own, no env
    opts = container_options(inv, placeholder, env, job_dir)
    out: list[str] = []
    i = 0
    while i < len(opts):
        if opts[i] == "--device" and i + 1 < len(opts) and _NPU_DEVICE.fullmatch(opts[i + 1]):
            i += 2
            continue
        out.append(opts[i])
        i += 1
    return out


def sbatch_options(inv: Inventory, slurm_name: str, output: str) -> list[str]:
    s, npn = inv.slurm(), inv.job.parallelism.npus_per_node
    opts = [f"--job-name={slurm_name}", f"--nodes={inv.nnodes}", "--ntasks-per-node=1", "--exclusive"]
    gres = s.gres if s.gres is not None else (f"gpu:{npn}" if inv.image.flavor == "ascend" else None)
    if gres is not None:
        opts.append(f"--gres={gres}")
    for key in ("partition", "account", "time"):
        value = getattr(s, key)
        if value is not None:
            opts.append(f"--{key}={value}")
    # Recovery on Slurm is Slurm's own: a job whose node fails is requeued with the same id and
    # the runtime resumes from the last checkpoint; the output file is appended to, not replaced.
    # (A task that exits non-zero fails the job: Slurm requeues only for node failures.)
    if inv.job.recovery.max_restarts > 0:
        opts += ["--requeue", "--open-mode=append"]
    else:
        opts.append("--no-requeue")
    opts.append(f"--output={output}")
    return opts


def build_slurm_job(inv: Inventory) -> SlurmJob:
    job, s = inv.job, inv.slurm()
    nnodes, flavor = inv.nnodes, inv.image.flavor
    spec = JobSpec(job=job, cluster=ClusterSpec(nnodes=nnodes, master_addr=MASTER_FROM_ALLOCATION,
                                                master_port=inv.master.port, flavor=flavor))
    job_dir = f"{inv.container.state_dir.rstrip('/')}/jobs/{job.name}"
    env = _static_env(inv, nnodes)
    if s.container == "docker":
        head = [*_docker_options(inv, env, job_dir), inv.image.ref]
    else:
        head = [f"{k}={v}" for k, v in env.items()]

    def step(name: str, argv: list[str]) -> SlurmStep:
        if s.container == "none":  # the job file is where the task wrote it, not the container's path
            argv = [f"{job_dir}/job.json" if a == JOB_FILE_IN_CONTAINER else a for a in argv]
        return SlurmStep(name, [*head, *argv])

    srun = ["srun", "--kill-on-bad-exit=1", "--label", "--export=ALL", "--ntasks-per-node=1"]
    phases: list[SlurmPhase] = []
    prepare = [step(n, a) for n, a, on in (("convert", convert_argv(job, flavor), job.steps.convert),
                                           ("preprocess", preprocess_argv(job, flavor), job.steps.preprocess)) if on]
    if prepare:
        # Shared storage: the first node writes the converted weights and dataset for all.
        where = ["--nodes=1", "--ntasks=1", "--relative=0"] if job.storage == "shared" else [f"--nodes={nnodes}", f"--ntasks={nnodes}"]
        phases.append(SlurmPhase("prepare", [*srun, *where], prepare))
    if job.steps.pretrain:
        phases.append(SlurmPhase("train", [*srun, f"--nodes={nnodes}", f"--ntasks={nnodes}"], [step("pretrain", pretrain_argv(spec, 0))]))
    slurm_name = f"{inv.container.name_prefix}-{job.name}"
    out_dir = s.output_dir.rstrip("/") + "/" if s.output_dir else ""
    output = f"{out_dir}%x-%j.out"
    return SlurmJob(
        job_name=job.name, slurm_name=slurm_name, nodes=nnodes, npus_per_node=job.parallelism.npus_per_node,
        flavor=flavor, image_ref=inv.image.ref, runner=s.container, container_prefix=inv.container.name_prefix,
        master_port=inv.master.port, job_dir=job_dir, job_spec=spec,
        sbatch_options=sbatch_options(inv, slurm_name, output), output=output, phases=phases,
    )


def task_script() -> str:
    return (templates_dir() / "slurm" / "task.sh").read_text(encoding="utf-8")


def render_sbatch(inv: Inventory, job: SlurmJob | None = None) -> str:
    job = job or build_slurm_job(inv)
    text = _ENV.get_template("slurm/job.sbatch.j2").render(
        job=job, sbatch_options=job.sbatch_options, task_script=task_script(), task_args=job.task_args(),
        job_spec_json=job.job_spec_json(),
        q=shlex.join, q1=shlex.quote,
    )
    # Each srun line reaches the nodes as arguments of one exec: Linux caps each at MAX_ARG_STRLEN.
    longest = max((len(a.encode()) for p in job.phases for st in p.steps for a in st.argv), default=0)
    if longest >= MAX_ARG_STRLEN or len(job.job_spec_json().encode()) >= MAX_ARG_STRLEN:
        raise InventoryError([f"{inv.source}: the sbatch script has an argument over {MAX_ARG_STRLEN - 1} bytes: shorten job.env or the job's paths"])
    if gres_count_ok(inv) is False:  # validated already; a guard for callers that skipped it
        raise InventoryError([f"{inv.source}: scheduler.slurm.gres asks for fewer NPUs than npus_per_node"])
    return text


def gres_count_ok(inv: Inventory) -> bool:
    g = inv.slurm().gres
    return g is None or inv.image.flavor != "ascend" or gres_count(g) >= inv.job.parallelism.npus_per_node
