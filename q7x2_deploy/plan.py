"""Inventory -> Plan: everything `up` will do, per host, computed without touching any host.

The plan is a value: `plan` prints it, tests compare it, `up` only carries it out. The whole
world (ranks, master, world size) is computed here once and handed to every node, so no node
ever guesses its rank.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pydantic import ConfigDict, TypeAdapter, ValidationError

from q7x2_deploy.inventory import ASCEND_MANAGEMENT_DEVICES, HostSpec, Inventory, InventoryError, SshTarget
from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import ClusterSpec, Job, JobSpec
from q7x2_runtime.safe_text import MAX_ARG_STRLEN, escape_non_printing
from q7x2_runtime.steps import JOB_FILE_IN_CONTAINER, convert_argv, preprocess_argv, pretrain_argv, pretrain_launches

PLAN_FORMAT_VERSION = 1
# A plan read back (`from_json`) has every field of its type and no unknown one.
_LOADED = ConfigDict(extra="forbid", strict=True)
LABEL_PREFIX = "q7x2"


@dataclass(frozen=True)
class StepPlan:
    __pydantic_config__ = _LOADED  # how from_json validates it
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
class Mount:
    """A host path bind-mounted into every container of the host."""

    __pydantic_config__ = _LOADED

    source: str  # host path
    target: str  # path inside the container
    read_only: bool = False

    def option(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class ContainerFlags:
    """The container options every host shares (from the inventory's `container`)."""

    __pydantic_config__ = _LOADED

    network_host: bool
    ipc_host: bool
    shm_size: str
    privileged: bool


@dataclass(frozen=True)
class HostPlan:
    __pydantic_config__ = _LOADED  # how from_json validates it
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
    # What the containers use from the host, typed; `docker_run` is derived from them.
    devices: list[str] = field(default_factory=list)  # device nodes given to every container
    mounts: list[Mount] = field(default_factory=list)  # in `-v` order; the last is the job directory
    is_master: bool = False  # runs the rendezvous (MASTER_ADDR is its address)

    def step(self, name: str) -> StepPlan | None:
        return next((s for s in self.steps if s.name == name), None)

    @property
    def ssh_target(self) -> SshTarget:
        """The SSH settings, typed."""
        return SshTarget.model_validate(self.ssh)

    @property
    def job_dir(self) -> str:
        return self.job_file.rsplit("/", 1)[0]


@dataclass(frozen=True)
class Plan:
    __pydantic_config__ = _LOADED  # how from_json validates it
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
    container: ContainerFlags | None = None  # None only in plans built by hand (tests)

    def with_nics(self, nics: dict[str, str]) -> Plan:
        """The plan with the interfaces `up` detected (host -> interface) pinned as `nic` would."""
        hosts = []
        for h in self.hosts:
            nic = nics.get(h.name)
            if nic is None or not h.detect_nic:
                hosts.append(h)
                continue
            extra = {k: nic for k in ("GLOO_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME") if k not in h.env}
            env = dict(sorted({**h.env, **extra}.items()))
            pinned = replace(h, env=env, detect_nic=False)
            if self.container is not None:
                hosts.append(self.with_docker_run(pinned))
            else:  # a plan built by hand: no flags to derive from, so splice the env in
                flags = [x for k, v in extra.items() for x in ("-e", f"{k}={v}")]

                def spliced(run: list[str], argv: list[str], flags: list[str] = flags) -> list[str]:
                    at = len(run) - len(argv) - 1  # the image: every option, env included, precedes it
                    return [*run[:at], *flags, *run[at:]]

                steps = [replace(s, docker_run=spliced(s.docker_run, s.argv)) for s in h.steps]
                hosts.append(replace(pinned, steps=steps, docker_run=spliced(h.docker_run, [])))
        return replace(self, hosts=hosts)

    def inconsistency(self) -> str | None:
        """What makes this plan one `build_plan` cannot have written (after `with_nics`), or None."""
        ranks = [h.node_rank for h in self.hosts]
        if not self.hosts or ranks != list(range(len(self.hosts))):
            return f"hosts: node ranks {ranks}, expected 0..{len(self.hosts) - 1} in order"
        if self.nnodes != len(self.hosts) or self.job_spec.cluster.nnodes != self.nnodes:
            return f"nnodes {self.nnodes} but {len(self.hosts)} hosts"
        masters = [h.name for h in self.hosts if h.is_master]
        if len(masters) != 1:
            return f"hosts: {len(masters)} masters ({', '.join(masters) or 'none'}), expected one"
        master = next(h for h in self.hosts if h.is_master)
        if master.address != self.master_addr or self.job_spec.cluster.master_addr != self.master_addr:
            return f"master_addr {self.master_addr} is not the master host's address {master.address}"
        if self.container is None:
            return "container: missing"
        for i, h in enumerate(self.hosts):
            derived = self.with_docker_run(h)
            if derived.docker_run != h.docker_run:
                return f"hosts[{i}].docker_run does not follow from the host's fields (edited by hand?)"
            for j, (a, b) in enumerate(zip(derived.steps, h.steps)):
                if a.docker_run != b.docker_run:
                    return f"hosts[{i}].steps[{j}].docker_run does not follow from the step's fields (edited by hand?)"
        return None

    def with_docker_run(self, host: HostPlan) -> HostPlan:
        """The host with its `docker run` argv (and each step's) derived from its fields."""
        assert self.container is not None
        opts = run_options(self.container, host)
        steps = [replace(s, docker_run=step_run(opts, self.image_ref, s)) for s in host.steps]
        return replace(host, docker_run=["docker", "run", "-d", *opts, self.image_ref], steps=steps)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["job_spec"] = self.job_spec.model_dump(mode="json")
        return {"version": PLAN_FORMAT_VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        """The plan `to_json` wrote, checked: same format version, every field of its type and
        no unknown one, and every `docker run` what the plan's fields give. Raises UserError
        (one line naming `source`) otherwise."""
        return load_plan_json(text, source)


def read_plan(path: str | Path) -> Plan:
    """A plan file (`q7x2-deploy plan --json > PLAN.json`, or a run directory's plan.json)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the plan: {getattr(e, 'strerror', None) or e}") from None
    return Plan.from_json(text, str(path))


def first_difference(a: object, b: object, path: str = "") -> str | None:
    """The path of the first value where two plan dicts differ (for a one-line refusal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if (d := first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))) is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            if (d := first_difference(x, y, f"{path}[{i}]")) is not None:
                return d
        return None
    return None if a == b else (path or "(top)")


def load_plan_json(text: str, source: str) -> Plan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: not JSON ({e.msg} at line {e.lineno}); write it with `q7x2-deploy plan --json`") from None
    if not isinstance(data, dict) or "version" not in data:
        raise UserError(f"{source}: not a q7x2-deploy plan (no `version`); write it with `q7x2-deploy plan --json`")
    version = data.pop("version")
    if version != PLAN_FORMAT_VERSION:
        raise UserError(f"{source}: plan format version {version!r}, this q7x2-deploy reads version "
                        f"{PLAN_FORMAT_VERSION}; write it again with this version's `q7x2-deploy plan --json`")
    try:
        plan = TypeAdapter(Plan).validate_json(json.dumps(data))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top)"
        raise UserError(escape_non_printing(f"{source}: {where}: {err['msg']} (not a plan `q7x2-deploy plan --json` "
                                            "writes; write it again)")) from None
    if (problem := plan.inconsistency()) is not None:
        raise UserError(escape_non_printing(f"{source}: {problem}; write it again with `q7x2-deploy plan --json`"))
    return plan


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


def run_options(flags: ContainerFlags, host: HostPlan) -> list[str]:
    """`docker run` options for one host, in the order an operator would write them."""
    # --init: a real PID 1 forwards SIGTERM to the step, so stopping a job takes seconds, not
    # the engine's full grace period.
    opts: list[str] = ["--init"]
    if flags.network_host:
        opts += ["--network", "host"]
    if flags.ipc_host:
        opts += ["--ipc", "host"]
    opts += ["--shm-size", flags.shm_size]
    if flags.privileged:
        opts.append("--privileged")
    for dev in host.devices:
        opts += ["--device", dev]
    for m in host.mounts:
        opts += ["-v", m.option()]
    for k, v in host.env.items():
        opts += ["-e", f"{k}={v}"]
    return opts


def container_flags(inv: Inventory) -> ContainerFlags:
    c = inv.container
    return ContainerFlags(network_host=c.network_host, ipc_host=c.ipc_host, shm_size=c.shm_size, privileged=c.privileged)


def container_options(inv: Inventory, host: HostSpec, env: dict[str, str], job_dir: str) -> list[str]:
    """`docker run` options for one inventory host with this env (the Slurm script's tasks start
    the same container as the SSH plan)."""
    typed = HostPlan(name=host.name, address=host.address, node_rank=0, ssh={}, env=env,
                     job_file=f"{job_dir}/job.json", docker_run=[], devices=host_devices(inv, host),
                     mounts=host_mounts(inv, job_dir))
    return run_options(container_flags(inv), typed)


def step_run(opts: list[str], image: str, step: StepPlan) -> list[str]:
    """The full `docker run` argv starting one step's container."""
    label_opts = [x for k, v in step.labels.items() for x in ("--label", f"{k}={v}")]
    return ["docker", "run", "-d", "--name", step.container_name, *label_opts, *opts, image, *step.argv]


def host_devices(inv: Inventory, host: HostSpec) -> list[str]:
    if inv.image.flavor != "ascend":
        return []
    return [*(f"/dev/davinci{i}" for i in inv.host_devices(host)), *ASCEND_MANAGEMENT_DEVICES]


def host_mounts(inv: Inventory, job_dir: str) -> list[Mount]:
    """Driver files read-only, the job's volumes, then the job directory read-only."""
    return [*(Mount(p, p, True) for p in inv.driver_mounts()),
            *(Mount(v, v) for v in inv.container.volumes),
            Mount(job_dir, JOB_FILE_IN_CONTAINER.rsplit("/", 1)[0], True)]


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
    # The runtime's Job, as the job file and plan.json carry it (the deployer's own settings,
    # `recovery`, stay in the inventory), so a plan read back from JSON equals this one.
    spec = JobSpec(job=Job.model_validate_json(job.model_dump_json(exclude={"recovery"})), cluster=cluster)
    flavor = inv.image.flavor
    image = inv.image.ref
    flags = container_flags(inv)
    job_dir = f"{inv.container.state_dir.rstrip('/')}/jobs/{job.name}"
    hosts: list[HostPlan] = []
    for rank, host in inv.ranked_hosts():
        env = launch_env(inv, host, rank)
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
            launch = pretrain_launches(spec, rank) if name == "pretrain" else None
            steps.append(StepPlan(name, phase, cname, labels, argv, [], launch))
        ssh: SshTarget = inv.ssh_target(host)
        hosts.append(
            HostPlan(
                name=host.name,
                address=host.address,
                node_rank=rank,
                ssh=ssh.model_dump(),
                env=env,
                job_file=f"{job_dir}/job.json",
                docker_run=[],
                steps=steps,
                npus=inv.host_npus_used(host, rank) if flavor == "ascend" else [],
                detect_nic=not {"GLOO_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"} <= env.keys(),
                devices=host_devices(inv, host),
                mounts=host_mounts(inv, job_dir),
                is_master=host.name == master.name,
            )
        )
    plan = Plan(
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
        container=flags,
    )
    plan = replace(plan, hosts=[plan.with_docker_run(h) for h in hosts])
    _check_command_lengths(inv, plan.hosts)
    return plan


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
