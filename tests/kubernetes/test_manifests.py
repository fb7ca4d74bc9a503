"""The Kubernetes objects of inventory.example.yaml: valid offline, and the same job as over SSH.

Golden files: tests/golden/k8s-*.example.yaml (Q7X2_UPDATE_GOLDEN=1 rewrites them; review the diff).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

from q7x2_deploy.backends.kubernetes.manifests import (
    JOB_KINDS,
    Manifests,
    build_manifests,
    memory_quantity,
)
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.validation import validate_data
from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.steps import convert_argv, preprocess_argv
from tests.kubernetes.offline_schemas import pod_templates, validate_stream

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventory.example.yaml"
GOLDEN = ROOT / "tests" / "golden"
BASE = yaml.safe_load(EXAMPLE.read_text())


def kubernetes_data(nnodes: int = 2, kind: str = "AscendJob", **changes) -> dict:
    """The example's job on `nnodes` Kubernetes nodes: no hosts, spares or master host (the
    scheduler places the nodes). `changes`: dotted__keys -> values."""
    data = copy.deepcopy(BASE)
    for key in ("hosts", "spares", "master"):
        data.pop(key)
    data["scheduler"] = {"kind": "kubernetes", "nodes": nnodes, "kubernetes": {"namespace": "llm", "kind": kind, "queue": "training"}}
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return data


def _inventory(nnodes: int = 2, kind: str = "AscendJob", **changes):
    inv, violations = validate_data(kubernetes_data(nnodes, kind, **changes))
    assert not violations, [v.format("inv.yaml") for v in violations]
    return inv


def _render(kind="AscendJob", nnodes=2, **changes) -> tuple[Manifests, list[dict]]:
    m = build_manifests(_inventory(nnodes, kind, **changes))
    return m, validate_stream(m.to_yaml())


def _main(template: dict) -> dict:
    (c,) = [c for c in template["spec"]["containers"] if c["name"] == "ascend"]
    return c


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("kind", JOB_KINDS)
@pytest.mark.parametrize("storage", ["shared", "per-node"])
@pytest.mark.parametrize("nnodes", [1, 4])
def test_every_object_validates_offline(kind, storage, nnodes):
    _, objects = _render(kind, nnodes, job__storage=storage)
    kinds = [o["kind"] for o in objects]
    assert kinds[:2] == ["ConfigMap", "ConfigMap"]
    assert kinds[-1] == ("AscendJob" if kind == "AscendJob" else "Job")
    assert ("Job" in kinds[:-1]) == (storage == "shared")


@pytest.mark.parametrize("storage", ["shared", "per-node"])
def test_cpu_flavor_on_volcano_validates_and_asks_for_no_npus(storage):
    m, objects = _render("VolcanoJob", 2, image__flavor="cpu", job__storage=storage)
    text = m.to_yaml()
    assert "huawei.com" not in text and "rings-config" not in text and "HCCL_IF_IP" not in text
    assert [o["kind"] for o in objects][0] == "ConfigMap"


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_golden_manifests(kind, tmp_path):
    # The example's job as a user would run it: the inventory file, --scheduler on the command line.
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(kubernetes_data(2, kind)))
    m = build_manifests(load_inventory(path, scheduler="kubernetes"))
    path = GOLDEN / f"k8s-{kind.lower()}.example.yaml"
    assert m.training["metadata"]["namespace"] == "llm"
    text = m.to_yaml()
    if os.environ.get("Q7X2_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with Q7X2_UPDATE_GOLDEN=1 once and review it"
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs from its golden file"
    validate_stream(text)


def test_ascendjob_is_what_mindcluster_asks_for():
    m, objects = _render("AscendJob", 4)
    job = m.training
    assert (job["apiVersion"], job["kind"]) == ("mindxdl.gitee.com/v1", "AscendJob")
    assert job["metadata"]["namespace"] == "llm"
    labels = job["metadata"]["labels"]
    assert labels["framework"] == "pytorch" and labels["ring-controller.atlas"] == "ascend-910b"
    assert labels["fault-scheduling"] == "force" and labels["fault-retry-times"] == "3"  # job.recovery.max_restarts
    spec = job["spec"]
    assert spec["schedulerName"] == "volcano"
    assert spec["runPolicy"]["schedulingPolicy"] == {"minAvailable": 4, "queue": "training"}
    assert {k: v["replicas"] for k, v in spec["replicaSpecs"].items()} == {"Master": 1, "Worker": 3}
    for template in pod_templates(job):
        pod = template["spec"]
        main = _main(template)
        assert main["ports"] == [{"containerPort": 6000, "name": "ascendjob-port"}]  # MASTER_PORT
        assert main["resources"] == {"requests": {"huawei.com/Ascend910": "8"}, "limits": {"huawei.com/Ascend910": "8"}}
        env = _env(main)
        assert env["ASCEND_VISIBLE_DEVICES"] == {"fieldRef": {"fieldPath": "metadata.annotations['huawei.com/Ascend910']"}}
        assert env["HCCL_IF_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
        assert env["XDL_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
        assert env["HCCL_CONNECT_TIMEOUT"] == "1200" and env["NNODES"] == "4" and env["NPUS_PER_NODE"] == "8"
        # The operator's variables, never the deployer's: the pods learn them at run time.
        assert not {"NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ASCEND_RT_VISIBLE_DEVICES"} & env.keys()
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet" and pod["hostIPC"] is True
        assert main["command"] == ["q7x2-runtime", "pretrain", "--job", "/etc/q7x2/job.json", "--placement", "ascend-operator"]
        assert "args" not in main
        assert template["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910b"
    rings = next(o for o in objects if o["metadata"]["name"] == "rings-config-qwen25-7b")
    assert rings["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910b"
    assert json.loads(rings["data"]["hccl.json"]) == {"status": "initializing"}
    mount = next(v for v in _main(pod_templates(job)[0])["volumeMounts"] if v["name"] == "ascend-910-config")
    assert mount["mountPath"] == "/user/serverid/devindex/config"


def test_mounts_are_the_docker_run_ones():
    run = build_plan(load_inventory(EXAMPLE)).hosts[0].docker_run
    docker_mounts = [run[i + 1] for i, a in enumerate(run) if a == "-v"]
    m = build_manifests(_inventory())
    for template in pod_templates(m.training):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = _main(template)["volumeMounts"]
        host_paths = []
        for mount in mounts:
            vol = volumes[mount["name"]]
            if "hostPath" in vol:
                assert vol["hostPath"]["path"] == mount["mountPath"]  # at the same path, as -v SRC:SRC
                host_paths.append(f"{mount['mountPath']}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else ""))
        assert host_paths == [m for m in docker_mounts if not m.endswith(":/etc/q7x2:ro")]
        shm = volumes["dshm"]
        assert shm == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in mounts
        assert volumes["jobspec"] == {"name": "jobspec", "configMap": {"name": "qwen25-7b-jobspec"}}
        assert {"name": "jobspec", "mountPath": "/etc/q7x2", "readOnly": True} in mounts


def test_job_file_is_the_job_with_the_scheduled_node_count():
    m = build_manifests(_inventory(4))
    spec = JobSpec.model_validate_json(m.objects[0]["data"]["job.json"])
    assert spec.cluster.nnodes == 4 and spec.cluster.master_port == 6000 and spec.cluster.flavor == "ascend"
    ssh = build_plan(load_inventory(EXAMPLE)).job_spec
    assert spec.job == JobSpec.model_validate_json(ssh.to_json()).job


def test_volcano_job_is_a_pytorch_plugin_job():
    m, _ = _render("VolcanoJob", 4)
    job = m.training
    assert (job["apiVersion"], job["kind"]) == ("batch.volcano.sh/v1alpha1", "Job")
    spec = job["spec"]
    assert spec["minAvailable"] == 4 and spec["queue"] == "training" and spec["maxRetry"] == 3
    assert spec["plugins"]["pytorch"] == ["--master=master", "--worker=worker", "--port=6000"]
    assert {(p["event"], p["action"]) for p in spec["policies"]} == {("PodFailed", "RestartJob"), ("PodEvicted", "RestartJob")}
    assert [(t["name"], t["replicas"]) for t in spec["tasks"]] == [("master", 1), ("worker", 3)]
    assert spec["tasks"][0]["policies"] == [{"event": "TaskCompleted", "action": "CompleteJob"}]
    for template in pod_templates(job):
        main = _main(template)
        assert main["command"][-2:] == ["--placement", "volcano-pytorch"]
        assert "XDL_IP" not in _env(main)
    assert "fault-scheduling" not in job["metadata"]["labels"]


def test_no_restarts_means_fail_fast_on_both_kinds():
    m, _ = _render("VolcanoJob", 2, job__recovery={"max_restarts": 0})
    assert {p["action"] for p in m.training["spec"]["policies"]} == {"TerminateJob"}
    assert m.training["spec"]["maxRetry"] == 0
    m, _ = _render("AscendJob", 2, job__recovery={"max_restarts": 0})
    assert not {"fault-scheduling", "fault-retry-times"} & m.training["metadata"]["labels"].keys()


def test_shared_storage_prepares_once_before_training():
    inv = _inventory()
    m, _ = _render("AscendJob", 2)
    prepare = m.prepare
    assert prepare is not None and prepare["metadata"]["name"] == "qwen25-7b-prepare"
    assert prepare["spec"]["backoffLimit"] == 0
    pod = prepare["spec"]["template"]["spec"]
    steps = pod["initContainers"] + pod["containers"]
    assert [(c["name"], c["command"]) for c in steps] == [("convert", convert_argv(inv.job, "ascend")), ("preprocess", preprocess_argv(inv.job, "ascend"))]
    for template in pod_templates(m.training):
        assert "initContainers" not in template["spec"]


def test_per_node_storage_prepares_on_every_node_first():
    inv = _inventory(2, job__storage="per-node")
    m, _ = _render("AscendJob", 2, job__storage="per-node")
    assert m.prepare is None
    for template in pod_templates(m.training):
        init = template["spec"]["initContainers"]
        assert [(c["name"], c["command"]) for c in init] == [("convert", convert_argv(inv.job, "ascend")), ("preprocess", preprocess_argv(inv.job, "ascend"))]


def test_skipped_steps_are_not_rendered():
    m, _ = _render("AscendJob", 2, job__steps={"convert": False, "preprocess": False})
    assert m.prepare is None
    with pytest.raises(UserError, match="job.steps.pretrain"):
        inv = _inventory()
        inv.job.steps.pretrain = False
        build_manifests(inv)


def test_container_network_settings_follow_the_inventory():
    m, _ = _render("AscendJob", 2, container__network_host=False, container__ipc_host=False, container__privileged=True)
    for template in pod_templates(m.training):
        pod = template["spec"]
        assert "hostNetwork" not in pod and "hostIPC" not in pod and "dnsPolicy" not in pod
        main = _main(template)
        assert "HCCL_IF_IP" not in _env(main)  # MindCluster: only with hostNetwork
        assert main["securityContext"] == {"privileged": True}


def test_one_pod_per_node():
    m, _ = _render("AscendJob", 2)
    for template in pod_templates(m.training):
        (term,) = template["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()


@pytest.mark.parametrize(("docker", "kube"), [("64g", "64Gi"), ("512m", "512Mi"), ("1048576", "1048576"), ("2G", "2Gi"), ("4096k", "4096Ki")])
def test_shm_sizes(docker, kube):
    assert memory_quantity(docker) == kube


@pytest.mark.parametrize("nnodes", [1, 2, 8])
def test_ascend_operators_own_checks_pass(nnodes):
    # ascend-operator's validateJob (MindCluster): framework label pytorch, only Master and Worker
    # replica types, no replica type with 0 replicas, exactly 1 Master, every replica type with a
    # container named `ascend` that has an image and asks for NPUs, successPolicy "" or AllWorkers.
    m, _ = _render("AscendJob", nnodes, job__training={**BASE["job"]["training"], "global_batch_size": 64})
    job = m.training
    assert job["metadata"]["labels"]["framework"] == "pytorch"
    specs = job["spec"]["replicaSpecs"]
    assert set(specs) <= {"Master", "Worker"} and specs["Master"]["replicas"] == 1
    assert all(s["replicas"] > 0 for s in specs.values())
    assert sum(s["replicas"] for s in specs.values()) == nnodes == job["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"]
    for s in specs.values():
        main = _main(s["template"])
        assert main["image"] and int(main["resources"]["requests"]["huawei.com/Ascend910"]) > 0
    assert job["spec"]["successPolicy"] in ("", "AllWorkers")
