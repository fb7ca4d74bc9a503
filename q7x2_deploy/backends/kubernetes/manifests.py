"""Inventory -> the Kubernetes objects of one job, as plain dicts (dumped as YAML by `to_yaml`).

What runs is what the SSH path runs: the same image, the same driver mounts and volumes, the
same job spec (from a ConfigMap at the path the containers read it from), the same steps'
argv and the one launch path `q7x2-runtime pretrain --job ...`. What differs is who places the
nodes: the scheduler picks N nodes, the operator (MindCluster's ascend-operator, or Volcano's
pytorch plugin) tells each pod its node rank and the master, and the launcher reads those
variables (`--placement`).

Objects, in the order `up` applies them:
1. ConfigMap `<job>-jobspec`: job.json, mounted read-only at /etc/q7x2.
2. ConfigMap `rings-config-<job>` (ascend): the rank table MindCluster fills in (hccl.json).
3. shared storage: a batch/v1 Job `<job>-prepare` (one pod: convert, then preprocess) that
   must succeed before training starts; per-node storage: the prepare steps are init
   containers of every training pod instead, so each node prepares its own copy.
4. The training job: an AscendJob (Master + Worker replicas) or a Volcano Job (master and
   worker tasks).
Facts about AscendJob and the two operators' variables are from MindCluster's documentation
and samples and Volcano's pytorch plugin (docs/running-jobs.md#kubernetes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from q7x2_deploy.inventory import Inventory
from q7x2_deploy.plan import LABEL_PREFIX
from q7x2_deploy.validation import KUBERNETES_POD_ENV
from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import ClusterSpec, JobSpec
from q7x2_runtime.steps import JOB_FILE_IN_CONTAINER, convert_argv, preprocess_argv, pretrain_argv

JobKind = Literal["AscendJob", "VolcanoJob"]
JOB_KINDS: tuple[JobKind, ...] = ("AscendJob", "VolcanoJob")

ASCENDJOB_API = ("mindxdl.gitee.com", "v1", "ascendjobs")  # group, version, plural
VOLCANO_JOB_API = ("batch.volcano.sh", "v1alpha1", "jobs")
# ascend-device-plugin's resource and the annotation it writes the allocated NPUs to.
NPU_RESOURCE = "huawei.com/Ascend910"
# MindCluster's chip-type label (Atlas 800T A2, the 910B the MindSpeed-LLM 2.0.0 stack targets).
RING_CONTROLLER = "ascend-910b"
# Where MindCluster's samples mount the rank table ConfigMap.
RANK_TABLE_DIR = "/user/serverid/devindex/config"
# ascend-operator injects its variables into the container of this name only, and takes the
# master port from the port of this name.
ASCEND_CONTAINER = "ascend"
ASCEND_PORT_NAME = "ascendjob-port"
VOLCANO_PORT_NAME = "pytorchjob-port"  # the name Volcano's pytorch plugin gives the port it opens
MASTER_TASK, WORKER_TASK = "master", "worker"


@dataclass(frozen=True)
class KubernetesTarget:
    """Where and as what the job is submitted."""

    nnodes: int
    namespace: str = "default"
    kind: JobKind = "AscendJob"
    queue: str = "default"


def target_of(inv: Inventory) -> KubernetesTarget:
    """The inventory's scheduler.kubernetes settings with the node count resolved."""
    kube = inv.scheduler.kubernetes
    if kube is None:
        return KubernetesTarget(nnodes=inv.nnodes)
    return KubernetesTarget(nnodes=inv.nnodes, namespace=kube.namespace, kind=kube.kind, queue=kube.queue)


@dataclass(frozen=True)
class Manifests:
    """The job's objects in apply order; `training` is the last of `objects`."""

    target: KubernetesTarget
    job_name: str
    objects: list[dict[str, Any]]

    @property
    def training(self) -> dict[str, Any]:
        return self.objects[-1]

    @property
    def prepare(self) -> dict[str, Any] | None:
        return next((o for o in self.objects if o["kind"] == "Job" and o["apiVersion"] == "batch/v1"), None)

    def to_yaml(self) -> str:
        return to_yaml(self.objects)


class _Dumper(yaml.SafeDumper):
    """Every object written out in full (no &anchors for shared lists), multi-line text (the
    job file) as a literal block when YAML can hold it so."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """One multi-document YAML stream (`kubectl apply -f -` reads it), keys in build order."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=False, width=10**6)


def placement_source(kind: JobKind) -> str:
    return "ascend-operator" if kind == "AscendJob" else "volcano-pytorch"


def spec_configmap_name(job: str) -> str:
    return f"{job}-jobspec"


def rank_table_name(job: str) -> str:
    return f"rings-config-{job}"  # MindCluster finds it by this name


def prepare_job_name(job: str) -> str:
    return f"{job}-prepare"


def master_address(job: str, kind: JobKind) -> str:
    """The master's name in the job file. The container's MASTER_ADDR, set by the operator,
    wins over it (the launcher prefers the environment); this is only what a reader sees:
    Volcano's pytorch plugin names the master task's first pod in the job's headless service,
    ascend-operator a Service in front of the Master pod."""
    return f"{job}-{MASTER_TASK}-0.{job}" if kind == "VolcanoJob" else f"{job}-{MASTER_TASK}-0"


_SIZE = re.compile(r"([0-9]+)([bkmgBKMG]?)")


def memory_quantity(size: str) -> str:
    """Docker's --shm-size (64g, 512m, 1024) as a Kubernetes quantity (64Gi, 512Mi, 1024)."""
    m = _SIZE.fullmatch(size)
    if m is None:  # validation has refused it already
        raise ValueError(f"not a size: {size!r}")
    unit = {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi"}[m.group(2).lower()]
    return f"{int(m.group(1))}{unit}"


def _labels(job: str, **extra: str) -> dict[str, str]:
    return {f"{LABEL_PREFIX}.job": job, **{f"{LABEL_PREFIX}.{k}": v for k, v in extra.items()}}


def job_spec(inv: Inventory, target: KubernetesTarget) -> JobSpec:
    cluster = ClusterSpec(
        nnodes=target.nnodes,
        master_addr=master_address(inv.job.name, target.kind),
        master_port=inv.master.port,
        flavor=inv.image.flavor,
    )
    return JobSpec(job=inv.job, cluster=cluster)


# Set here for every container; the job's own env may not name them (validation says so).
COMPUTED_ENV = KUBERNETES_POD_ENV | {"NNODES", "NPUS_PER_NODE"}


def _env(inv: Inventory, target: KubernetesTarget, *, ascendjob: bool) -> list[dict[str, Any]]:
    """Plain values first (sorted, as the SSH path's), then the ones the pod learns at run time.
    NODE_RANK, WORLD_SIZE and MASTER_* come from the operator."""
    ascend = inv.image.flavor == "ascend"
    env: dict[str, str] = {k: v for k, v in inv.job.env.items() if k not in COMPUTED_ENV}
    if ascend:
        env.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    env["NNODES"] = str(target.nnodes)
    env["NPUS_PER_NODE"] = str(inv.job.parallelism.npus_per_node)
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]

    def field(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    if ascend:
        # Ascend Docker Runtime mounts the NPUs ascend-device-plugin allocated, named in this
        # annotation; the container then numbers them 0..N-1, so device_count() is npus_per_node.
        out.append(field("ASCEND_VISIBLE_DEVICES", f"metadata.annotations['{NPU_RESOURCE}']"))
        if ascendjob:
            out.append(field("XDL_IP", "status.hostIP"))  # MindCluster identifies the pod's node by it
        if inv.container.network_host:
            # On the host's network HCCL must bind the host's address (MindCluster: only then).
            out.append(field("HCCL_IF_IP", "status.hostIP"))
    return out


def _volumes(inv: Inventory, target: KubernetesTarget) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts): what `docker run -v` and --shm-size give on SSH hosts."""
    job = inv.job.name
    vols: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for i, path in enumerate(inv.driver_mounts()):
        vols.append({"name": f"driver-{i}", "hostPath": {"path": path}})
        mounts.append({"name": f"driver-{i}", "mountPath": path, "readOnly": True})
    for i, path in enumerate(inv.container.volumes):
        vols.append({"name": f"data-{i}", "hostPath": {"path": path}})
        mounts.append({"name": f"data-{i}", "mountPath": path})
    vols.append({"name": "jobspec", "configMap": {"name": spec_configmap_name(job)}})
    mounts.append({"name": "jobspec", "mountPath": JOB_FILE_IN_CONTAINER.rsplit("/", 1)[0], "readOnly": True})
    vols.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": memory_quantity(inv.container.shm_size)}})
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if inv.image.flavor == "ascend":
        vols.append({"name": "ascend-910-config", "configMap": {"name": rank_table_name(job)}})
        mounts.append({"name": "ascend-910-config", "mountPath": RANK_TABLE_DIR})
    return vols, mounts


def _container(inv: Inventory, name: str, argv: list[str], env: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "image": inv.image.ref,
        "imagePullPolicy": "IfNotPresent",
        # command, not args: the image's entrypoint is bypassed as `docker run IMAGE ARGV` is not,
        # and no shell ever reads these words.
        "command": list(argv),
        "env": env,
        "volumeMounts": mounts,
    }
    if inv.container.privileged:
        c["securityContext"] = {"privileged": True}
    return c


def _prepare_steps(inv: Inventory) -> list[tuple[str, list[str]]]:
    job, flavor = inv.job, inv.image.flavor
    steps = []
    if job.steps.convert:
        steps.append(("convert", convert_argv(job, flavor)))
    if job.steps.preprocess:
        steps.append(("preprocess", preprocess_argv(job, flavor)))
    return steps


def _pod_spec(inv: Inventory, containers: list[dict[str, Any]], init: list[dict[str, Any]], volumes: list[dict[str, Any]],
              anti_affinity_phase: str) -> dict[str, Any]:
    c = inv.container
    spec: dict[str, Any] = {}
    if c.network_host:
        # Cluster DNS still resolves the master's Service from the host's network.
        spec.update({"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"})
    if c.ipc_host:
        spec["hostIPC"] = True
    spec["automountServiceAccountToken"] = False
    spec["restartPolicy"] = "Never"  # a failed step fails the pod; the job's policy decides what follows
    # One pod per node: two nodes' ranks on one host would share its NPUs and ports.
    spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": _labels(inv.job.name, phase=anti_affinity_phase)},
        "topologyKey": "kubernetes.io/hostname",
    }]}}  # fmt: skip
    if init:
        spec["initContainers"] = init
    spec["containers"] = containers
    spec["volumes"] = volumes
    return spec


def _npu_resources(inv: Inventory) -> dict[str, Any]:
    if inv.image.flavor != "ascend":
        return {}
    # Quantities as strings: the API takes either, the Python client's models only strings.
    n = str(inv.job.parallelism.npus_per_node)
    return {"resources": {"requests": {NPU_RESOURCE: n}, "limits": {NPU_RESOURCE: n}}}


def _training_template(inv: Inventory, target: KubernetesTarget, role: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    job = inv.job.name
    vols, mounts = _volumes(inv, target)
    init = []
    if inv.job.storage == "per-node":
        init = [_container(inv, name, argv, env, mounts) for name, argv in _prepare_steps(inv)]
    argv = pretrain_argv(job_spec(inv, target), 0, placement_source(target.kind))
    main = _container(inv, ASCEND_CONTAINER, argv, env, mounts)
    port_name = ASCEND_PORT_NAME if target.kind == "AscendJob" else VOLCANO_PORT_NAME
    main["ports"] = [{"containerPort": inv.master.port, "name": port_name}]
    main.update(_npu_resources(inv))
    labels = _labels(job, phase="train", step="pretrain", role=role)
    if inv.image.flavor == "ascend":
        labels["ring-controller.atlas"] = RING_CONTROLLER
    return {"metadata": {"labels": labels}, "spec": _pod_spec(inv, [main], init, vols, "train")}


def _metadata(inv: Inventory, target: KubernetesTarget, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": target.namespace, "labels": labels}


def _ascendjob(inv: Inventory, target: KubernetesTarget, env: list[dict[str, Any]]) -> dict[str, Any]:
    job = inv.job.name
    labels = {"framework": "pytorch", "ring-controller.atlas": RING_CONTROLLER}
    if inv.job.recovery.max_restarts > 0:
        # MindCluster's fault handling: a pod on a faulty NPU or node is deleted at once and the
        # job rescheduled; a failure of the training itself is retried this many times. The
        # launcher resumes every restart from the newest checkpoint complete on every node.
        labels.update({"fault-scheduling": "force", "fault-retry-times": str(inv.job.recovery.max_restarts)})
    labels.update(_labels(job))
    replicas: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": "Never", "template": _training_template(inv, target, MASTER_TASK, env)},
    }
    if target.nnodes > 1:
        replicas["Worker"] = {"replicas": target.nnodes - 1, "restartPolicy": "Never",
                              "template": _training_template(inv, target, WORKER_TASK, env)}
    return {
        "apiVersion": f"{ASCENDJOB_API[0]}/{ASCENDJOB_API[1]}",
        "kind": "AscendJob",
        "metadata": _metadata(inv, target, job, labels),
        "spec": {
            "schedulerName": "volcano",
            "runPolicy": {"schedulingPolicy": {"minAvailable": target.nnodes, "queue": target.queue}},
            "successPolicy": "AllWorkers",
            "replicaSpecs": replicas,
        },
    }


def _volcano_job(inv: Inventory, target: KubernetesTarget, env: list[dict[str, Any]]) -> dict[str, Any]:
    job = inv.job.name
    labels = {"ring-controller.atlas": RING_CONTROLLER} if inv.image.flavor == "ascend" else {}
    labels.update(_labels(job))
    restarts = inv.job.recovery.max_restarts
    # Any pod failing or evicted restarts the whole job (every node resumes from the same
    # checkpoint) up to maxRetry times; with no restarts allowed it ends the job at once.
    action = "RestartJob" if restarts > 0 else "TerminateJob"
    tasks: list[dict[str, Any]] = [{
        "name": MASTER_TASK, "replicas": 1,
        # Training ends on every node together; the master's end is the job's.
        "policies": [{"event": "TaskCompleted", "action": "CompleteJob"}],
        "template": _training_template(inv, target, MASTER_TASK, env),
    }]  # fmt: skip
    if target.nnodes > 1:
        tasks.append({"name": WORKER_TASK, "replicas": target.nnodes - 1, "template": _training_template(inv, target, WORKER_TASK, env)})
    return {
        "apiVersion": f"{VOLCANO_JOB_API[0]}/{VOLCANO_JOB_API[1]}",
        "kind": "Job",
        "metadata": _metadata(inv, target, job, labels),
        "spec": {
            "schedulerName": "volcano",
            "minAvailable": target.nnodes,
            "queue": target.queue,
            "maxRetry": restarts,
            "policies": [{"event": "PodFailed", "action": action}, {"event": "PodEvicted", "action": action}],
            "plugins": {
                # MASTER_ADDR, MASTER_PORT, WORLD_SIZE (pods) and RANK for every pod; it opens the
                # port and turns on the svc plugin, whose headless Service names the master.
                "pytorch": [f"--master={MASTER_TASK}", f"--worker={WORKER_TASK}", f"--port={inv.master.port}"],
                "svc": [],
            },
            "tasks": tasks,
        },
    }


def _prepare_job(inv: Inventory, target: KubernetesTarget, env: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Shared storage: one pod writes the converted weights and the dataset for every node."""
    steps = _prepare_steps(inv)
    if inv.job.storage != "shared" or not steps:
        return None
    job = inv.job.name
    vols, mounts = _volumes(inv, target)
    containers = [_container(inv, name, argv, env, mounts) for name, argv in steps]
    main = containers[-1]
    if inv.image.flavor == "ascend":
        # MindSpeed-LLM's converter imports torch_npu, which needs a node with the Ascend
        # driver: one NPU places the pod on such a node (and makes ASCEND_VISIBLE_DEVICES real).
        main["resources"] = {"requests": {NPU_RESOURCE: "1"}, "limits": {NPU_RESOURCE: "1"}}
    labels = _labels(job, phase="prepare")
    pod = {"metadata": {"labels": labels}, "spec": _pod_spec(inv, [main], containers[:-1], vols, "prepare")}
    if inv.image.flavor == "ascend":
        pod["spec"]["schedulerName"] = "volcano"  # NPUs are allocated by Volcano's Ascend plugin
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(inv, target, prepare_job_name(job), labels),
        "spec": {"backoffLimit": 0, "template": pod},  # a failed prepare is reported, never retried blindly
    }


def build_manifests(inv: Inventory, target: KubernetesTarget | None = None) -> Manifests:
    """The job's objects; `target` defaults to the inventory's scheduler.kubernetes."""
    target = target or target_of(inv)
    job = inv.job.name
    if not inv.job.steps.pretrain:
        # The training job is what the scheduler runs; prepare alone is not a job there.
        raise UserError(f"{inv.source}: job.steps.pretrain: a Kubernetes job always trains; run prepare-only jobs over SSH")
    spec = job_spec(inv, target)
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": _metadata(inv, target, spec_configmap_name(job), _labels(job)),
        "data": {JOB_FILE_IN_CONTAINER.rsplit("/", 1)[1]: spec.to_json() + "\n"},
    }]  # fmt: skip
    if inv.image.flavor == "ascend":
        objects.append({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(inv, target, rank_table_name(job), {"ring-controller.atlas": RING_CONTROLLER, **_labels(job)}),
            "data": {"hccl.json": '{\n    "status": "initializing"\n}\n'},  # MindCluster writes the real table
        })  # fmt: skip
    prepare = _prepare_job(inv, target, _env(inv, target, ascendjob=False))
    if prepare is not None:
        objects.append(prepare)
    env = _env(inv, target, ascendjob=target.kind == "AscendJob")
    objects.append(_ascendjob(inv, target, env) if target.kind == "AscendJob" else _volcano_job(inv, target, env))
    return Manifests(target=target, job_name=job, objects=objects)
