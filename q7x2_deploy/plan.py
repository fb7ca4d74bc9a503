"""Inventory -> Plan: everything `up` will do, per host, computed without touching any host.

The plan is a value: `plan` prints it, tests compare it, `up` only carries it out. The whole
world (ranks, master, world size) is computed here once and handed to every node, so no node
ever guesses its rank.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field, replace

from q7x2_deploy.inventory import ASCEND_MANAGEMENT_DEVICES, HostSpec, Inventory, InventoryError, SshTarget
from q7x2_runtime.jobspec import ClusterSpec, JobSpec
from q7x2_runtime.safe_text import MAX_ARG_STRLEN, escape_non_printing
from q7x2_runtime.steps import JOB_FILE_IN_CONTAINER, convert_argv, preprocess_argv, pretrain_argv, pretrain_launches

PLAN_FORMAT_VERSION = 1
LABEL_PREFIX = "q7x2"


@dataclass(frozen=True)
class StepPlan:
    name: str  # convert | preprocess | pretrain
    phase: str  # prepare | train
    container_name: str
    labels: dict[str, str]
    argv: list[str]  # the command inside the container
    docker_run: list[str]  # the full `docker run` argv starting this step's container
    # pretrain only: the exact torchrun line the launcher runs for each start kind ("first":
    # from the converted weights, "resume": from save_dir); it picks one from the files.
    launch: dict[str, list[str]] | None = None


@dataclass(frozen=True)
class HostPlan:
    name: str
    address: str
    node_rank: int
    ssh: dict[str, object]
    env: dict[str, str]
    job_file: str  # host path the job spec is written to before any container starts
    docker_run: list[str]  # the container spec shared by all steps: no name, labels or command
    steps: list[StepPlan] = field(default_factory=list)
    npus: list[int] = field(default_factory=list)  # host NPU indices the ranks run on (ascend)
    # No `nic` (and no *_SOCKET_IFNAME in env): `up` finds the interface that carries `address`
    # on the host and sets GLOO_SOCKET_IFNAME and HCCL_SOCKET_IFNAME from it.
    detect_nic: bool = False

    def step(self, name: str) -> StepPlan | None:
        return next((s for s in self.steps if s.name == name), None)


@dataclass(frozen=True)
class Plan:
    job_name: str
    image_ref: str
    flavor: str
    distribution: str
    master_addr: str
    master_port: int
    nnodes: int
    world_size: int
    storage: str
    job_spec: JobSpec
    hosts: list[HostPlan]

    def with_nics(self, nics: dict[str, str]) -> Plan:
        """The plan with the interfaces `up` detected (host -> interface) pinned as `nic` would."""
        hosts = []
        for h in self.hosts:
            nic = nics.get(h.name)
            if nic is None or not h.detect_nic:
                hosts.append(h)
                continue
            extra = {k: nic for k in ("GLOO_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME") if k not in h.env}
            flags = [x for k, v in extra.items() for x in ("-e", f"{k}={v}")]

            def pinned(run: list[str], argv: list[str], flags: list[str] = flags) -> list[str]:
                at = len(run) - len(argv) - 1  # the image: every option, env included, precedes it
                return [*run[:at], *flags, *run[at:]]

            steps = [replace(s, docker_run=pinned(s.docker_run, s.argv)) for s in h.steps]
            hosts.append(replace(h, env=dict(sorted({**h.env, **extra}.items())), steps=steps,
                                 docker_run=pinned(h.docker_run, []), detect_nic=False))
        return replace(self, hosts=hosts)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["job_spec"] = self.job_spec.model_dump(mode="json")
        return {"version": PLAN_FORMAT_VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def visible_devices(inv: Inventory, host: HostSpec) -> str:
    """ASCEND_RT_VISIBLE_DEVICES: every NPU the container is given, so device_count() is their
    number. The runtime takes logical IDs in ascending order: a container with explicit
    --device nodes numbers its NPUs 0..D-1; a privileged one sees all of the host's, numbered
    as on the host."""
    given = inv.host_devices(host)
    ids = given if inv.container.privileged else range(len(given))
    return ",".join(str(i) for i in ids)


def launch_env(inv: Inventory, host: HostSpec, node_rank: int) -> dict[str, str]:
    """The environment of every container on a host: cluster variables, then job and host env."""
    job = inv.job
    master = inv.master_host()
    nnodes = len(inv.hosts)
    npn = job.parallelism.npus_per_node
    env: dict[str, str] = {}
    env.update(job.env)
    env.update(host.env)
    if host.nic is not None:
        # Pin both collective libraries to the NIC the other hosts reach us on.
        env.setdefault("GLOO_SOCKET_IFNAME", host.nic)
        env.setdefault("HCCL_SOCKET_IFNAME", host.nic)
    if inv.image.flavor == "ascend":
        env.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
        env["ASCEND_RT_VISIBLE_DEVICES"] = visible_devices(inv, host)
    # Computed values last: validation forbids overriding them.
    env.update(
        {
            "NODE_RANK": str(node_rank),
            "NNODES": str(nnodes),
            "NPUS_PER_NODE": str(npn),
            "MASTER_ADDR": master.address,
            "MASTER_PORT": str(inv.master.port),
            "WORLD_SIZE": str(nnodes * npn),
        }
    )
    return dict(sorted(env.items()))


def container_options(inv: Inventory, host: HostSpec, env: dict[str, str], job_dir: str) -> list[str]:
    """`docker run` options for one host, in the order an operator would write them."""
    c = inv.container
    # --init: a real PID 1 forwards SIGTERM to the step, so stopping a job takes seconds, not
    # the engine's full grace period.
    opts: list[str] = ["--init"]
    if c.network_host:
        opts += ["--network", "host"]
    if c.ipc_host:
        opts += ["--ipc", "host"]
    opts += ["--shm-size", c.shm_size]
    if c.privileged:
        opts.append("--privileged")
    if inv.image.flavor == "ascend":
        for i in inv.host_devices(host):
            opts += ["--device", f"/dev/davinci{i}"]
        for dev in ASCEND_MANAGEMENT_DEVICES:
            opts += ["--device", dev]
    for path in inv.driver_mounts():
        opts += ["-v", f"{path}:{path}:ro"]
    for vol in c.volumes:
        opts += ["-v", f"{vol}:{vol}"]
    opts += ["-v", f"{job_dir}:{JOB_FILE_IN_CONTAINER.rsplit('/', 1)[0]}:ro"]
    for k, v in env.items():
        opts += ["-e", f"{k}={v}"]
    return opts


def _labels(job: str, phase: str, step: str, host: str, rank: int) -> dict[str, str]:
    return {
        f"{LABEL_PREFIX}.job": job,
        f"{LABEL_PREFIX}.phase": phase,
        f"{LABEL_PREFIX}.step": step,
        f"{LABEL_PREFIX}.host": host,
        f"{LABEL_PREFIX}.rank": str(rank),
    }


def _hosts_preparing(inv: Inventory, node_rank: int) -> bool:
    # Shared storage: one host writes the converted weights and dataset for all.
    return inv.job.storage == "per-node" or node_rank == 0


def build_plan(inv: Inventory) -> Plan:
    job = inv.job
    master = inv.master_host()
    cluster = ClusterSpec(
        nnodes=len(inv.hosts),
        master_addr=master.address,
        master_port=inv.master.port,
        flavor=inv.image.flavor,
    )
    spec = JobSpec(job=job, cluster=cluster)
    flavor = inv.image.flavor
    image = inv.image.ref
    job_dir = f"{inv.container.state_dir.rstrip('/')}/jobs/{job.name}"
    hosts: list[HostPlan] = []
    for rank, host in inv.ranked_hosts():
        env = launch_env(inv, host, rank)
        opts = container_options(inv, host, env, job_dir)
        wanted: list[tuple[str, str, list[str]]] = []
        if _hosts_preparing(inv, rank):
            if job.steps.convert:
                wanted.append(("convert", "prepare", convert_argv(job, flavor)))
            if job.steps.preprocess:
                wanted.append(("preprocess", "prepare", preprocess_argv(job, flavor)))
        if job.steps.pretrain:
            wanted.append(("pretrain", "train", pretrain_argv(spec, rank)))
        steps = []
        for name, phase, argv in wanted:
            cname = f"{inv.container.name_prefix}-{job.name}-{name}-{rank}"
            labels = _labels(job.name, phase, name, host.name, rank)
            label_opts = [x for k, v in labels.items() for x in ("--label", f"{k}={v}")]
            run = ["docker", "run", "-d", "--name", cname, *label_opts, *opts, image, *argv]
            launch = pretrain_launches(spec, rank) if name == "pretrain" else None
            steps.append(StepPlan(name, phase, cname, labels, argv, run, launch))
        ssh: SshTarget = inv.ssh_target(host)
        hosts.append(
            HostPlan(
                name=host.name,
                address=host.address,
                node_rank=rank,
                ssh=ssh.model_dump(),
                env=env,
                job_file=f"{job_dir}/job.json",
                docker_run=["docker", "run", "-d", *opts, image],
                steps=steps,
                npus=inv.host_npus_used(host, rank) if flavor == "ascend" else [],
                detect_nic=not {"GLOO_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"} <= env.keys(),
            )
        )
    _check_command_lengths(inv, hosts)
    return Plan(
        job_name=job.name,
        image_ref=image,
        flavor=flavor,
        distribution=inv.image.distribution,
        master_addr=master.address,
        master_port=inv.master.port,
        nnodes=len(inv.hosts),
        world_size=spec.world_size,
        storage=job.storage,
        job_spec=spec,
        hosts=hosts,
    )


def _check_command_lengths(inv: Inventory, hosts: list[HostPlan]) -> None:
    """Each `docker run` reaches the host as one `sh -c` argument, which Linux caps at
    MAX_ARG_STRLEN: refuse a plan whose command would fail there (long env values or paths)."""
    index = {h.name: i for i, h in enumerate(inv.hosts)}
    lines = []
    for host in hosts:
        sizes = [(len(shell_line(step.docker_run).encode()), step.name) for step in host.steps]
        size, name = max(sizes, default=(0, ""))
        if size >= MAX_ARG_STRLEN:
            lines.append(escape_non_printing(
                f"{inv.source}: hosts[{index[host.name]}]: the `docker run` of step {name} on {host.name} is {size} bytes; "
                f"a remote shell takes at most {MAX_ARG_STRLEN - 1} in one command: shorten job.env, the host's env, container.volumes or the job's paths"
            ))
    if lines:
        raise InventoryError(lines)


def shell_line(argv: list[str]) -> str:
    """One correctly quoted shell line for display; the only place argv is quoted."""
    return shlex.join(argv)
