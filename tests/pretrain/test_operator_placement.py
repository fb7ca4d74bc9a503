"""Node rank and node count from a Kubernetes operator's variables (`pretrain --placement`).

The variables are those MindCluster's ascend-operator injects into an AscendJob's `ascend`
container (RANK, WORLD_SIZE in NPUs, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and those
Volcano's pytorch plugin injects (RANK, WORLD_SIZE in pods, MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import JobSpec
from q7x2_runtime.pretrain import launch
from q7x2_runtime.pretrain.node import resolve_placement
from q7x2_runtime.steps import pretrain_argv


def _spec(nnodes: int = 4) -> JobSpec:
    return JobSpec.model_validate({
        "job": {"name": "qwen25-7b", "model": {"preset": "qwen2.5-7b"}, "parallelism": {"tp": 4, "pp": 2, "npus_per_node": 8},
                "training": {"seq_length": 4096, "micro_batch_size": 1, "global_batch_size": 64}},
        "cluster": {"nnodes": nnodes, "master_addr": "qwen25-7b-master-0", "master_port": 6000, "flavor": "ascend"},
    })  # fmt: skip


ASCEND_WORKER_2 = {"RANK": "2", "WORLD_SIZE": "32", "LOCAL_WORLD_SIZE": "8", "LOCAL_RANK": "0,1,2,3,4,5,6,7",
                   "MASTER_ADDR": "10.96.0.12", "MASTER_PORT": "6000", "NNODES": "4", "NPUS_PER_NODE": "8"}  # fmt: skip
VOLCANO_WORKER_2 = {"RANK": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "qwen25-7b-master-0.qwen25-7b", "MASTER_PORT": "6000"}


@pytest.mark.parametrize(("source", "env"), [("ascend-operator", ASCEND_WORKER_2), ("volcano-pytorch", VOLCANO_WORKER_2)])
def test_torchrun_gets_the_operators_rank_and_node_count(source, env):
    spec = _spec()
    placement = resolve_placement(spec, env, source=source)
    assert (placement.node_rank, placement.nnodes, placement.world_size) == (2, 4, 32)
    argv = launch.engine_argv(spec, placement, "mindspeed", "first")
    i = argv.index("--nnodes")
    assert argv[i : i + 8] == ["--nnodes", "4", "--node_rank", "2", "--master_addr", env["MASTER_ADDR"], "--master_port", "6000"]


def test_the_master_pod_is_node_rank_0():
    env = {**ASCEND_WORKER_2, "RANK": "0", "MASTER_ADDR": "10.0.3.7"}
    placement = resolve_placement(_spec(), env, source="ascend-operator")
    assert (placement.node_rank, placement.master_addr) == (0, "10.0.3.7")


@pytest.mark.parametrize(("source", "env", "message"), [
    ("ascend-operator", {**ASCEND_WORKER_2, "LOCAL_WORLD_SIZE": "4"}, "LOCAL_WORLD_SIZE=4 .* 8 processes per node"),
    ("ascend-operator", {**ASCEND_WORKER_2, "WORLD_SIZE": "16"}, "placed 2 node.*job file says 4"),
    ("ascend-operator", {**ASCEND_WORKER_2, "WORLD_SIZE": "36"}, "not a multiple of LOCAL_WORLD_SIZE"),
    ("ascend-operator", {k: v for k, v in ASCEND_WORKER_2.items() if k != "RANK"}, "RANK is not set; ascend-operator sets it"),
    ("ascend-operator", {k: v for k, v in ASCEND_WORKER_2.items() if k != "LOCAL_WORLD_SIZE"}, "LOCAL_WORLD_SIZE is not set"),
    ("ascend-operator", {**ASCEND_WORKER_2, "RANK": "4"}, "outside 0..3"),
    ("volcano-pytorch", {**VOLCANO_WORKER_2, "WORLD_SIZE": "32"}, "placed 32 node"),
    ("volcano-pytorch", {**VOLCANO_WORKER_2, "RANK": "two"}, "RANK='two' is not an integer"),
])  # fmt: skip
def test_a_pod_started_for_another_job_is_refused(source, env, message):
    with pytest.raises(UserError, match=message):
        resolve_placement(_spec(), env, source=source)


def test_node_rank_flag_and_operator_placement_exclude_each_other():
    with pytest.raises(UserError, match="give one"):
        resolve_placement(_spec(), ASCEND_WORKER_2, 1, source="ascend-operator")


def test_the_deployers_variables_are_not_the_operators():
    # NODE_RANK alone does not place a pod under an operator: its RANK is what counts.
    with pytest.raises(UserError, match="RANK is not set"):
        resolve_placement(_spec(), {"NODE_RANK": "1", "WORLD_SIZE": "32", "LOCAL_WORLD_SIZE": "8"}, source="ascend-operator")


def test_the_cli_takes_the_flag_the_manifests_pass(tmp_path):
    spec_file = tmp_path / "job.json"
    spec_file.write_text(_spec().to_json())
    argv = pretrain_argv(_spec(), 0, "ascend-operator")
    assert argv[-2:] == ["--placement", "ascend-operator"]
    env = {"PATH": "/usr/bin:/bin", **ASCEND_WORKER_2}
    r = subprocess.run([sys.executable, "-m", "q7x2_runtime.cli", *argv[1:3], str(spec_file), *argv[4:], "--dry-run"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "--nnodes 4 --node_rank 2 --master_addr 10.96.0.12 --master_port 6000" in r.stdout
