"""What `--scheduler kubernetes` refuses, one line each, and `plan --scheduler kubernetes` on the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from q7x2_deploy.validation import validate_data
from tests.kubernetes.offline_schemas import validate_stream
from tests.kubernetes.test_manifests import kubernetes_data


def messages(data: dict) -> list[str]:
    _, violations = validate_data(data)
    return [f"{v.dotted}: {v.message}" for v in violations]


def test_the_example_job_on_kubernetes_is_valid():
    assert messages(kubernetes_data()) == []
    assert messages(kubernetes_data(kind="VolcanoJob", image__flavor="cpu")) == []


@pytest.mark.parametrize(("changes", "message"), [
    ({"job__name": "7b-qwen"}, "job.name: '7b-qwen' names the Kubernetes job and its Services: start it with a letter and end it with a letter or digit"),
    ({"job__name": "qwen-"}, "job.name: 'qwen-' names the Kubernetes job"),
    ({"image__flavor": "cpu"}, "scheduler.kubernetes.kind: an AscendJob runs on NPUs (ascend-operator counts WORLD_SIZE in NPUs): use image.flavor ascend, or kind VolcanoJob for the cpu flavor"),
    ({"job__steps": {"pretrain": False}}, "job.steps.pretrain: a Kubernetes job always trains: prepare-only jobs run with scheduler kind ssh"),
    ({"container__devices": 8}, "container.devices: applies only to kind ssh and slurm: on Kubernetes the device plugin allocates npus_per_node NPUs to each pod"),
    ({"job__env": {"HCCL_CONNECT_TIMEOUT": "1200", "HCCL_IF_IP": "10.0.0.1"}}, "job.env.HCCL_IF_IP: HCCL_IF_IP is set in every pod on Kubernetes"),
    ({"job__env": {"HCCL_CONNECT_TIMEOUT": "1200", "LOCAL_WORLD_SIZE": "8"}}, "job.env.LOCAL_WORLD_SIZE: LOCAL_WORLD_SIZE is set in every pod"),
    ({"scheduler__kubernetes": {"namespace": "Train"}}, "scheduler.kubernetes.namespace: 'Train' is not a Kubernetes name"),
])  # fmt: skip
def test_refused_with_one_line(changes, message):
    got = messages(kubernetes_data(**changes))
    assert len(got) == 1 and got[0].startswith(message), got


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", *args], capture_output=True, text=True, timeout=120)


def test_plan_prints_the_manifests_kubectl_reads(tmp_path):
    path = tmp_path / "inv.yaml"
    data = kubernetes_data(kind="VolcanoJob")
    data["scheduler"]["kind"] = "ssh"  # --scheduler overrides it
    path.write_text(yaml.safe_dump(data))
    r = _cli("plan", str(path), "--scheduler", "kubernetes", "-o", "yaml")
    assert r.returncode == 0, r.stderr
    objects = validate_stream(r.stdout)
    assert [o["kind"] for o in objects] == ["ConfigMap", "ConfigMap", "Job", "Job"]
    assert objects[-1]["apiVersion"] == "batch.volcano.sh/v1alpha1"
    r = _cli("plan", str(path), "--scheduler", "kubernetes", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert listed["kind"] == "List" and listed["items"] == objects


def test_plan_refuses_what_does_not_apply(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(kubernetes_data()))
    r = _cli("plan", str(path), "--scripts", str(tmp_path / "s"))
    assert r.returncode == 2 and "per-host scripts are for scheduler kind ssh" in r.stderr and "Traceback" not in r.stderr
    r = _cli("plan", str(path), "--scheduler", "ssh", "-o", "yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr
