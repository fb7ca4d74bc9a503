"""`q7x2-deploy validate`: every rule the whole job must satisfy, each violation one line.

A violation names the YAML path, its line where known, and the rule. Rules that relate several
values (tp vs the model, world size vs batch sizes, ranks across hosts) live here rather than in
the pydantic models so that all of them are reported at once, not only the first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from q7x2_deploy.addresses import address_key
from q7x2_deploy.inventory import Inventory, InventoryError, is_loopback, mount_point, npu_ranges, parse_inventory
from q7x2_deploy.scheduler_spec import gres_count
from q7x2_deploy.yaml_source import KeyPath, YamlDocument, YamlSyntaxError, parse_yaml, read_yaml_file
from q7x2_runtime.safe_text import escape_non_printing, show
from q7x2_runtime.steps import JOB_FILE_IN_CONTAINER, MINDSPEED_LLM_DIR

# Set by the deployer for every container; an inventory may not override them.
RESERVED_ENV = frozenset(
    {"NODE_RANK", "NNODES", "NPUS_PER_NODE", "GPUS_PER_NODE", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK",
     "ASCEND_RT_VISIBLE_DEVICES"}  # from `devices`
)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# Directories the image itself provides (templates/Dockerfile.*.j2 and the CANN base image):
# a volume at one of them, or at a parent of one, would hide it inside the container.
IMAGE_DIRS = (
    "/bin", "/sbin", "/lib", "/lib64", "/usr", "/usr/bin", "/usr/lib", "/usr/local/bin", "/usr/local/lib",
    "/etc", "/opt/q7x2", "/usr/local/share/q7x2", "/opt/MindSpeed", MINDSPEED_LLM_DIR, "/usr/local/Ascend/ascend-toolkit", "/usr/local/Ascend/nnal",
)  # fmt: skip
# Kernel and engine filesystems: never a place for a bind mount of job data.
KERNEL_DIRS = ("/proc", "/sys", "/dev")
JOB_DIR_IN_CONTAINER = JOB_FILE_IN_CONTAINER.rsplit("/", 1)[0]


@dataclass(frozen=True)
class Violation:
    path: KeyPath
    message: str
    line: int | None = None

    @property
    def dotted(self) -> str:
        def part(p: str | int) -> str:
            if isinstance(p, int):
                return f"[{p}]"
            # A hostile key (newline, quote, ...) is shown quoted so the line stays one line.
            return p if _PLAIN_KEY.fullmatch(str(p)) else show(p, 40)

        return ".".join(part(p) for p in self.path).replace(".[", "[") or "(top level)"

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        # Whatever a value or file name holds, the violation stays one line.
        return escape_non_printing(f"{where}: {self.dotted}: {self.message}")


def _input_path(loc: tuple[Any, ...], data: object) -> KeyPath:
    """pydantic's error location reduced to the keys that exist in the input.

    pydantic adds names of its own to a location ('[key]' for a bad dict key, a branch name in a
    union); the input tells which parts are keys, so a key named 'int' or 'function-x' is kept
    and pydantic's own names are dropped. A missing key is the one last part the input lacks.
    """
    node, out = data, []
    for i, p in enumerate(loc):
        if isinstance(node, dict) and p in node:
            out.append(p)
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            out.append(p)
            node = node[p]
        elif isinstance(node, dict) and i == len(loc) - 1 and isinstance(p, str) and p != "[key]":
            out.append(p)  # a required key that is missing
            node = None
    return tuple(out)


def _got(e: Mapping[str, Any]) -> str:
    # Type and range errors say what was found, shortened and escaped; key errors need not.
    if e["type"] in ("missing", "extra_forbidden", "value_error", "assertion_error") or "input" not in e:
        return ""
    value = e["input"]
    if isinstance(value, dict | list):
        return f" (got a {'mapping' if isinstance(value, dict) else 'list'})"
    return f" (got {show(value)})"


def _pydantic_violations(err: ValidationError, data: object) -> list[Violation]:
    out = []
    for e in err.errors(include_url=False):
        loc = _input_path(e["loc"], data)
        msg = e["msg"]
        # pydantic locates a bad dict key as (..., key, "[key]").
        bad_key = len(e["loc"]) >= 2 and e["loc"][-1] == "[key]" and e["loc"][-2] == e.get("input") and not isinstance(e.get("input"), str)
        if e["type"] == "invalid_key" or bad_key:
            key = e.get("input")
            kind = "null" if key is None else "boolean" if isinstance(key, bool) else "number" if isinstance(key, int | float) else type(key).__name__
            # Named as the YAML text spells it, which is how its line was recorded.
            loc = _input_path(e["loc"][: -2 if bad_key else -1], data) + ({None: "null", True: "true", False: "false"}.get(key, str(key)) if key is None or isinstance(key, bool) else str(key),)
            msg = f"a key must be text, YAML read this one as a {kind} ({show(key)}): quote it"
        elif e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling; see inventory.example.yaml)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        else:
            msg += _got(e)
        out.append(Violation(loc, msg))
    # A union (e.g. devices: count or list) reports one error per branch; keep one per path.
    seen: set[KeyPath] = set()
    unique = []
    for v in out:
        if v.path not in seen:
            seen.add(v.path)
            unique.append(v)
    return unique


def _divisors(n: int) -> str:
    # n is bounded by the model's range checks; pairs up to sqrt(n) keep it cheap regardless.
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return ", ".join(str(d) for d in sorted(set(small + [n // d for d in small])))


def _check_parallelism(inv: Inventory) -> list[Violation]:
    job = inv.job
    p, t, d = job.parallelism, job.training, job.model.d
    out: list[Violation] = []
    par = ("job", "parallelism")
    if d.num_query_groups % p.tp:
        out.append(Violation(par + ("tp",), f"tp {p.tp} does not divide the model's {d.num_query_groups} query groups (choose tp in {_divisors(d.num_query_groups)})"))
    if d.num_attention_heads % p.tp:
        out.append(Violation(par + ("tp",), f"tp {p.tp} does not divide the model's {d.num_attention_heads} attention heads"))
    if p.num_layer_list is not None:
        if len(p.num_layer_list) != p.pp:
            out.append(Violation(par + ("num_layer_list",), f"has {len(p.num_layer_list)} entries but pp is {p.pp}: give one entry per pipeline stage"))
        if sum(p.num_layer_list) != d.num_layers:
            out.append(Violation(par + ("num_layer_list",), f"sums to {sum(p.num_layer_list)} but the model has {d.num_layers} layers"))
    elif d.num_layers % p.pp:
        out.append(Violation(par + ("pp",), f"pp {p.pp} does not divide the model's {d.num_layers} layers (choose pp in {_divisors(d.num_layers)} or give num_layer_list)"))
    world = inv.nnodes * p.npus_per_node
    if world == 0:
        pass  # no hosts and no scheduler.nodes: _check_scheduler says what to give
    elif world % (p.tp * p.pp):
        out.append(Violation(par, f"world size {world} ({inv.nnodes} {'nodes' if inv.scheduler.placed else 'hosts'} x {p.npus_per_node} npus_per_node) is not divisible by tp x pp = {p.tp * p.pp}"))
    else:
        dp = world // (p.tp * p.pp)
        if t.global_batch_size % (t.micro_batch_size * dp):
            out.append(Violation(("job", "training", "global_batch_size"), f"{t.global_batch_size} is not divisible by micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}"))
    if t.min_lr > t.lr:
        out.append(Violation(("job", "training", "min_lr"), f"min_lr {t.min_lr} is larger than lr {t.lr}"))
    if t.seq_length > d.max_position_embeddings:
        out.append(Violation(("job", "training", "seq_length"), f"{t.seq_length} exceeds the model's max_position_embeddings {d.max_position_embeddings}"))
    return out


def _check_hosts(inv: Inventory) -> list[Violation]:
    out: list[Violation] = []
    n = len(inv.hosts)
    for field, same in (("name", str.lower), ("address", address_key)):
        seen: dict[str, int] = {}
        for i, h in enumerate(inv.hosts):
            value = getattr(h, field)
            key = same(value)
            if key in seen:
                out.append(Violation(("hosts", i, field), f"{show(value)} is also used by hosts[{seen[key]}]; each host needs its own {field}"))
            else:
                seen[key] = i
    explicit = [(i, h.node_rank) for i, h in enumerate(inv.hosts) if h.node_rank is not None]
    if explicit:
        ranks = [h.node_rank if h.node_rank is not None else i for i, h in enumerate(inv.hosts)]
        seen_rank: dict[int, int] = {}
        for i, r in enumerate(ranks):
            if r in seen_rank:
                out.append(Violation(("hosts", i, "node_rank"), f"node_rank {r} is also hosts[{seen_rank[r]}]'s (a host without node_rank takes its position)"))
            else:
                seen_rank[r] = i
            if r >= n:
                out.append(Violation(("hosts", i, "node_rank"), f"node_rank {r} is out of range: ranks must be exactly 0..{n - 1}"))
    if n > 1:
        for i, h in enumerate(inv.hosts):
            if is_loopback(h.address):
                out.append(Violation(("hosts", i, "address"), f"{show(h.address)} is a loopback address: with {n} hosts every node must reach each host at a routable address"))
    if inv.master.host is not None and inv.master.host not in {h.name for h in inv.hosts}:
        names = ", ".join(h.name for h in inv.hosts[:8]) + (", ..." if n > 8 else "")
        out.append(Violation(("master", "host"), f"{show(inv.master.host)} is not one of the hosts ({names})"))
    return out


def _check_spares(inv: Inventory) -> list[Violation]:
    """A spare is a host in waiting: its name and address are its own, it has no rank yet."""
    out: list[Violation] = []
    same = {"name": str.lower, "address": address_key}
    taken = {f: {same[f](getattr(h, f)): f"hosts[{i}]" for i, h in enumerate(inv.hosts)} for f in ("name", "address")}
    for i, h in enumerate(inv.spares):
        for f in ("name", "address"):
            key = same[f](getattr(h, f))
            if key in taken[f]:
                out.append(Violation(("spares", i, f), f"{show(getattr(h, f))} is also used by {taken[f][key]}; each spare needs its own {f}"))
            else:
                taken[f][key] = f"spares[{i}]"
        if h.node_rank is not None:
            out.append(Violation(("spares", i, "node_rank"), "a spare has no rank: it takes the rank of the host it replaces"))
        if len(inv.hosts) + len(inv.spares) > 1 and is_loopback(h.address):
            out.append(Violation(("spares", i, "address"), f"{show(h.address)} is a loopback address: every node must reach a spare at a routable address"))
    return out


def _check_devices(inv: Inventory) -> list[Violation]:
    if inv.image.flavor != "ascend":
        return []
    out: list[Violation] = []
    need = inv.job.parallelism.npus_per_node
    shared = inv.container.devices
    if isinstance(shared, list) and len(set(shared)) != len(shared):
        out.append(Violation(("container", "devices"), "lists an NPU more than once"))
    for section, i, h in [*(("hosts", i, h) for i, h in enumerate(inv.hosts)),
                          *(("spares", i, h) for i, h in enumerate(inv.spares))]:
        have = inv.host_devices(h)
        if need > len(have):
            path = (section, i, "devices") if h.devices is not None else ("job", "parallelism", "npus_per_node")
            out.append(Violation(path, f"npus_per_node {need} exceeds the {len(have)} NPU devices given to host {h.name!r}"))
        if h.devices is not None and len(set(have)) != len(have):
            out.append(Violation((section, i, "devices"), f"host {h.name!r} lists an NPU more than once"))
    return out


def _overexposed(inv: Inventory) -> list[tuple[int, int, KeyPath]]:
    """(node rank, NPUs visible, YAML path) of each ascend host whose containers see more NPUs
    than the job runs ranks there."""
    if inv.image.flavor != "ascend":
        return []
    npn = inv.job.parallelism.npus_per_node
    out: list[tuple[int, int, tuple[str | int, ...]]] = []
    for rank, h in inv.ranked_hosts():
        i = inv.hosts.index(h)
        seen = len(inv.host_devices(h))
        if seen > npn:
            out.append((rank, seen, ("hosts", i, "devices") if h.devices is not None else ("container", "devices")))
    return out


def _check_per_node_devices(inv: Inventory) -> list[Violation]:
    # MindSpeed-LLM's per-node dataset builder (and the dataset helpers' compilation) runs on
    # the rank with rank % device_count == 0: that is one rank on every host only when each
    # container sees exactly npus_per_node NPUs; with more, some hosts have no such rank and
    # never build what their ranks then try to read.
    if inv.job.storage != "per-node":
        return []
    npn = inv.job.parallelism.npus_per_node
    by_rank = dict((r, h) for r, h in inv.ranked_hosts())
    over = _overexposed(inv)
    if not over:
        return []

    def host(r: int, d: int) -> str:
        starved = not any((r * npn + j) % d == 0 for j in range(npn))
        return f"{by_rank[r].name!r} ({d} NPUs visible{f', ranks {r * npn}-{r * npn + npn - 1}: none is one' if starved else ''})"

    names = ", ".join(host(r, d) for r, d, _ in over)
    return [Violation(("job", "storage"), f"per-node storage needs each host's containers to see exactly npus_per_node = {npn} NPUs: "
                      f"MindSpeed-LLM builds a node's dataset on its rank with rank % device_count == 0, one per host only then; "
                      f"{names} see more; give those hosts {npn} devices or use storage: shared")]


def _warn_overexposed_devices(inv: Inventory) -> list[Violation]:
    npn = inv.job.parallelism.npus_per_node
    by_rank = dict((r, h) for r, h in inv.ranked_hosts())
    grouped: dict[KeyPath, list[tuple[int, int]]] = {}
    for r, d, path in _overexposed(inv):
        grouped.setdefault(path, []).append((r, d))
    out = []
    for path, hosts in grouped.items():
        uses = "; ".join(f"{by_rank[r].name!r} uses NPU {npu_ranges(inv.host_npus_used(by_rank[r], r))} of {d}" for r, d in hosts)
        out.append(Violation(path, f"containers see more NPUs than the job's npus_per_node = {npn} ranks per host; "
                             f"each rank takes NPU rank % device_count, so {uses}; set devices to the {npn} NPUs to use"))
    return out


def _check_env(inv: Inventory) -> list[Violation]:
    out: list[Violation] = []
    places: list[tuple[KeyPath, dict[str, str]]] = [(("job", "env"), inv.job.env)]
    places += [(("hosts", i, "env"), h.env) for i, h in enumerate(inv.hosts)]
    places += [(("spares", i, "env"), h.env) for i, h in enumerate(inv.spares)]
    for path, env in places:
        for key in env:
            if key in RESERVED_ENV:
                out.append(Violation(path + (key,), f"{key} is computed by q7x2-deploy for every host and cannot be set here"))
    return out


def _within(p: PurePosixPath, root: PurePosixPath) -> bool:
    return p == root or root in p.parents


def _check_paths(inv: Inventory) -> list[Violation]:
    volumes = [mount_point(v) for v in inv.container.volumes]
    mounts = [mount_point(m) for m in inv.driver_mounts()]
    paths = inv.job.paths
    out: list[Violation] = []
    listed = ", ".join(v if len(v) <= 60 else show(v) for v in inv.container.volumes[:8]) + (", ..." if len(volumes) > 8 else "")
    for name, value in paths.all().items():
        if name == "tokenizer" and paths.tokenizer is None:
            continue  # it defaults to hf_weights, which is checked (and reported) itself
        p = mount_point(value)
        if not any(_within(p, v) for v in volumes):
            out.append(Violation(("job", "paths", name), f"{show(value)} is not under any container volume ({listed}); add its directory to container.volumes"))
        for m in mounts:
            if _within(p, m):
                out.append(Violation(("job", "paths", name), f"{show(value)} is inside the read-only driver mount {m}"))
    hf, mcore, save = (mount_point(v) for v in (paths.hf_weights, paths.mcore_weights, paths.save_dir))
    if _within(mcore, hf) or _within(hf, mcore):
        out.append(Violation(("job", "paths", "mcore_weights"), f"{paths.mcore_weights} and hf_weights {paths.hf_weights} overlap: conversion would write into (or replace) its own input"))
    if _within(save, hf):
        out.append(Violation(("job", "paths", "save_dir"), f"{paths.save_dir} is inside hf_weights {paths.hf_weights}: training would write checkpoints into the HF model"))
    # What the job writes never goes into the HF model; and conversion replaces mcore_weights as
    # a whole (a forced rerun renames the old directory away), so nothing else may live inside it.
    for name in ("save_dir", "logs", "dataset_prefix", "replica", "raw_dataset", "tokenizer"):
        value = getattr(paths, name)
        if value is None or name == "mcore_weights":
            continue
        p = mount_point(value)
        if name in ("logs", "dataset_prefix", "replica") and _within(p, hf):
            out.append(Violation(("job", "paths", name), f"{value} is inside hf_weights {paths.hf_weights}: the job would write its {name.replace('_', ' ')} into the HF model"))
        elif _within(p, mcore) and not _within(hf, mcore):
            out.append(Violation(("job", "paths", name), f"{value} is inside mcore_weights {paths.mcore_weights}, which conversion replaces as a whole: give it a directory of its own"))
    return out


def _check_mounts(inv: Inventory) -> list[Violation]:
    """Volumes and driver mounts: distinct, not hiding the image, not on each other."""
    c = inv.container
    out: list[Violation] = []
    job_dir = PurePosixPath(JOB_DIR_IN_CONTAINER)
    image_dirs = [PurePosixPath(d) for d in IMAGE_DIRS]
    given = [(("container", "volumes", i), v) for i, v in enumerate(c.volumes)]
    mounts_path = ("container", "driver_mounts")
    given += [(mounts_path + (i,), m) for i, m in enumerate(inv.driver_mounts())] if c.driver_mounts is not None else []
    defaults = [mount_point(m) for m in inv.driver_mounts()] if c.driver_mounts is None else []
    seen: dict[PurePosixPath, KeyPath] = {}
    for path, value in given:
        p = mount_point(value)
        where = "volume" if path[1] == "volumes" else "driver mount"
        if p in seen:
            other = seen[p]
            out.append(Violation(path, f"{value} is mounted twice (also {other[1]}[{other[2]}]); each mount point once"))
            continue
        seen[p] = path
        if p in defaults:
            out.append(Violation(path, f"{value} is also one of the default Ascend driver mounts (read-only); remove it here"))
        hidden = [d for d in image_dirs if _within(d, p)]
        if hidden:
            out.append(Violation(path, f"{where} {value} would hide the image's own {hidden[0]} inside the container; mount a directory of its own"))
        elif _within(job_dir, p) or _within(p, job_dir):
            out.append(Violation(path, f"{where} {value} collides with {job_dir}, where every container reads its job spec"))
        elif any(_within(p, PurePosixPath(k)) for k in KERNEL_DIRS):
            out.append(Violation(path, f"{where} {value} is inside a kernel filesystem (/proc, /sys, /dev); devices go in container.devices"))
    return out


def _check_preprocess(inv: Inventory) -> list[Violation]:
    job = inv.job
    if job.steps.preprocess and job.steps.pretrain and "text" not in job.preprocess.json_keys:
        return [Violation(("job", "preprocess", "json_keys"), f"does not include 'text', but training reads {job.paths.data_path}; tokenize the 'text' column")]
    return []


def _check_tools(inv: Inventory) -> list[Violation]:
    out = []
    if inv.image.flavor == "cpu":
        for step in ("convert", "preprocess"):
            if getattr(inv.job.tools, step) == "mindspeed":
                out.append(Violation(("job", "tools", step), "mindspeed needs the ascend image flavor; the cpu image has only q7x2"))
    return out


def _warn_hccl_timeouts(inv: Inventory) -> list[Violation]:
    if inv.image.flavor != "ascend":
        return []
    out: list[Violation] = []
    places: list[tuple[KeyPath, dict[str, str]]] = [(("job", "env"), inv.job.env)]
    places += [(("hosts", i, "env"), {**inv.job.env, **h.env}) for i, h in enumerate(inv.hosts) if h.env]
    if inv.nnodes > 1 and any(env.get("HCCL_CONNECT_TIMEOUT", "120").strip() == "120" for _, env in places):
        where = next(p for p, env in places if env.get("HCCL_CONNECT_TIMEOUT", "120").strip() == "120")
        out.append(Violation(where, f"HCCL_CONNECT_TIMEOUT is HCCL's default 120 s with {inv.nnodes} {'nodes' if inv.scheduler.placed else 'hosts'}: ranks on "
                             "different hosts start at different times (image load, conversion); multi-node jobs usually "
                             "set it to 1200 or more"))
    for path, env in places:
        if env.get("HCCL_EXEC_TIMEOUT", "").strip() == "0":
            out.append(Violation(path + ("HCCL_EXEC_TIMEOUT",), "HCCL_EXEC_TIMEOUT 0 never times out: a rank stuck in a "
                                 "collective hangs the job instead of failing it"))
            break
    return out


def _check_scheduler(inv: Inventory) -> list[Violation]:
    """Which keys apply to which scheduler kind; what each kind needs."""
    sch, kind = inv.scheduler, inv.scheduler.kind
    out: list[Violation] = []
    if kind == "ssh":
        if not inv.hosts:
            out.append(Violation(("hosts",), "required with scheduler kind ssh (the default): list the hosts, "
                                 "or set scheduler.kind to slurm or kubernetes with scheduler.nodes"))
        if sch.nodes is not None:
            out.append(Violation(("scheduler", "nodes"), "applies only to kind slurm or kubernetes; with ssh the job runs on every host in hosts[]"))
        return out
    if sch.nodes is None and not inv.hosts:
        out.append(Violation(("scheduler", "nodes"), f"required with kind {kind}: how many nodes the scheduler places (each runs npus_per_node NPUs)"))
    placed = f"applies only to kind ssh: with {kind} the scheduler places the nodes"
    if inv.spares:
        out.append(Violation(("spares",), f"{placed} and replaces failed ones"))
    if inv.master.host is not None:
        out.append(Violation(("master", "host"), f"{placed}; the first node of the allocation is the master"))
    for i, h in enumerate(inv.hosts):
        for key, what in (("node_rank", "ranks follow the allocation's node order"), ("devices", "the NPUs come from the allocation"),
                          ("nic", "set GLOO_SOCKET_IFNAME/HCCL_SOCKET_IFNAME in job.env"), ("env", "use job.env")):
            if getattr(h, key) not in (None, {}):
                out.append(Violation(("hosts", i, key), f"{placed} ({what})"))
    if inv.image.distribution == "ssh":
        out.append(Violation(("image", "distribution"), f"ssh streams the image to hosts known in advance; with {kind} the nodes pull it: use registry"))
    if kind == "slurm":
        slurm = inv.slurm()
        if slurm.login is None:
            out.append(Violation(("scheduler", "slurm", "login") if sch.slurm is not None else ("scheduler", "slurm"),
                                 "required with kind slurm: the login host sbatch runs on (a name from hosts[] or an address)"))
        if inv.container.devices is not None and slurm.container == "docker":
            out.append(Violation(("container", "devices"), "applies only to kind ssh: with slurm each node's NPUs come from its allocation (SLURM_STEP_GPUS)"))
        npn = inv.job.parallelism.npus_per_node
        if slurm.gres is not None and gres_count(slurm.gres) < npn and inv.image.flavor == "ascend":
            out.append(Violation(("scheduler", "slurm", "gres"), f"asks for {gres_count(slurm.gres)} per node but npus_per_node is {npn}"))
    return out


# What a Kubernetes pod learns at run time (the operator's placement, the node's address, the
# NPUs the device plugin allocated): the job's env may not set them there.
KUBERNETES_POD_ENV = frozenset({"HCCL_IF_IP", "XDL_IP", "ASCEND_VISIBLE_DEVICES", "LOCAL_WORLD_SIZE"})
# Object names made from job.name (the job, `<job>-master-0`, the headless Service Volcano
# names after the job) must be RFC 1035 labels: a letter first, no '-' last.
_K8S_JOB_NAME = re.compile(r"[a-z](?:[a-z0-9-]*[a-z0-9])?")


def _check_kubernetes(inv: Inventory) -> list[Violation]:
    if inv.scheduler.kind != "kubernetes":
        return []
    kube = inv.scheduler.kubernetes
    out: list[Violation] = []
    if not _K8S_JOB_NAME.fullmatch(inv.job.name):
        out.append(Violation(("job", "name"), f"{inv.job.name!r} names the Kubernetes job and its Services: start it with a letter and end it with a letter or digit"))
    if (kube.kind if kube is not None else "AscendJob") == "AscendJob" and inv.image.flavor != "ascend":
        path = ("scheduler", "kubernetes", "kind") if kube is not None else ("image", "flavor")
        out.append(Violation(path, "an AscendJob runs on NPUs (ascend-operator counts WORLD_SIZE in NPUs): use image.flavor ascend, or kind VolcanoJob for the cpu flavor"))
    if not inv.job.steps.pretrain:
        out.append(Violation(("job", "steps", "pretrain"), "a Kubernetes job always trains: prepare-only jobs run with scheduler kind ssh"))
    if inv.container.devices is not None:
        out.append(Violation(("container", "devices"), "applies only to kind ssh and slurm: on Kubernetes the device plugin allocates npus_per_node NPUs to each pod"))
    for key in inv.job.env:
        if key in KUBERNETES_POD_ENV:
            out.append(Violation(("job", "env", key), f"{key} is set in every pod on Kubernetes (from the node, the device plugin or the operator) and cannot be set here"))
    return out


def _warn_slurm_gres(inv: Inventory) -> list[Violation]:
    slurm = inv.slurm()
    if inv.scheduler.kind != "slurm" or inv.image.flavor != "ascend" or slurm.gres is None or slurm.gres.startswith("gpu:"):
        return []
    n = inv.job.parallelism.npus_per_node
    return [Violation(("scheduler", "slurm", "gres"), f"{slurm.gres} is not a gpu GRES: Slurm gives its steps no SLURM_STEP_GPUS, "
                      f"so each node's container gets NPUs 0-{n - 1} (the job holds its nodes exclusively); "
                      "sites that declare NPUs as Name=gpu Type=npu use gpu:npu:N")]


RULES = (_check_scheduler, _check_kubernetes, _check_parallelism, _check_hosts, _check_spares, _check_devices, _check_per_node_devices, _check_env, _check_paths, _check_mounts, _check_preprocess, _check_tools)
# Findings that do not stop a job but that an operator should read: `validate`, `plan` and
# `check` print them; they never change an exit status.
WARNING_RULES = (_warn_overexposed_devices, _warn_hccl_timeouts, _warn_slurm_gres)


def inventory_warnings(inv: Inventory, doc: YamlDocument | None = None) -> list[Violation]:
    found = [w for rule in WARNING_RULES for w in rule(inv)]
    return _with_lines(doc, found) if doc is not None else found


def file_warnings(path: Path, inv: Inventory) -> list[str]:
    """Warnings of an inventory already loaded from `path`, as `FILE:LINE: PATH: warning: ...`."""
    try:
        doc: YamlDocument | None = read_yaml_file(path)
    except (OSError, YamlSyntaxError):
        doc = None
    return [Violation(w.path, f"warning: {w.message}", w.line).format(str(path)) for w in inventory_warnings(inv, doc)]


def validate_data(data: object) -> tuple[Inventory | None, list[Violation]]:
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        return None, [Violation((), f"the inventory must be a YAML mapping with hosts, image, job, ...; got {kind}")]
    try:
        inv = parse_inventory(data)
    except ValidationError as e:
        return None, _pydantic_violations(e, data)
    violations: list[Violation] = []
    for rule in RULES:
        violations.extend(rule(inv))
    return inv, violations


def _with_lines(doc: YamlDocument, violations: list[Violation]) -> list[Violation]:
    return [Violation(v.path, v.message, v.line or doc.line_of(v.path)) for v in violations]


def with_scheduler_kind(data: object, kind: str | None) -> object:
    """The input as `--scheduler KIND` sees it: scheduler.kind replaced, nothing else."""
    if kind is None or not isinstance(data, dict):
        return data
    section = data.get("scheduler")
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return data  # parsing reports the section itself
    return {**data, "scheduler": {**section, "kind": kind}}


def validate_document(doc: YamlDocument, scheduler: str | None = None) -> tuple[Inventory | None, list[Violation]]:
    dupes = [Violation(path, "duplicate key: YAML would silently keep only the last one", line) for path, line in doc.duplicate_keys]
    inv, violations = validate_data(with_scheduler_kind(doc.data, scheduler))
    violations = dupes + _with_lines(doc, violations)
    return (inv if not violations else None), violations


def validate_text(text: str) -> tuple[Inventory | None, list[Violation]]:
    try:
        doc = parse_yaml(text)
    except YamlSyntaxError as e:
        return None, [Violation((), str(e), e.line)]
    return validate_document(doc)


def validate_file(path: Path, scheduler: str | None = None) -> tuple[Inventory | None, list[Violation]]:
    try:
        doc = read_yaml_file(path)
    except YamlSyntaxError as e:
        return None, [Violation((), str(e), e.line)]
    return validate_document(doc, scheduler)


def load_inventory(path: str | Path, scheduler: str | None = None) -> Inventory:
    """Parse and validate; `scheduler` (`--scheduler`) replaces scheduler.kind before the rules run."""
    inv, violations = validate_file(Path(path), scheduler=scheduler)
    if violations or inv is None:
        raise InventoryError([v.format(str(path)) for v in violations])
    inv._source = str(path)
    return inv
