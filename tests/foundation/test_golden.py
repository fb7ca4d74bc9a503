"""Golden tests: the rendered Dockerfiles and the plan of inventory.example.yaml.

The golden files are what an operator reads; a change to them must be deliberate. To accept a
deliberate change: Q7X2_UPDATE_GOLDEN=1 pytest tests/foundation/test_golden.py, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.render import render_dockerfile

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
EXAMPLE = ROOT / "inventory.example.yaml"


def _check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("Q7X2_UPDATE_GOLDEN"):
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with Q7X2_UPDATE_GOLDEN=1 once and review it"
    assert actual == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


@pytest.fixture(scope="module")
def plan():
    return build_plan(load_inventory(EXAMPLE))


def test_cpu_dockerfile_golden():
    _check_golden("Dockerfile.cpu", render_dockerfile("cpu", base_image="q7x2/debian-python:bookworm"))


def test_ascend_dockerfile_golden():
    _check_golden("Dockerfile.ascend", render_dockerfile("ascend", base_image="cann-toolkit:8.0.0-py3.8"))


def test_ascend_dockerfile_clone_mode_needs_repositories():
    with pytest.raises(ValueError, match="repository URLs"):
        render_dockerfile("ascend", base_image="cann", vendor=False)
    text = render_dockerfile(
        "ascend",
        base_image="cann",
        vendor=False,
        source_repos={"mindspeed": "https://git.example/MindSpeed.git", "mindspeed_llm": "https://git.example/MindSpeed-LLM.git", "megatron": "https://git.example/Megatron-LM.git"},
    )
    assert "git clone --depth 1 --branch 2.0.0_core_r0.8.0 https://git.example/MindSpeed.git" in text
    assert "--branch core_r0.8.0 https://git.example/Megatron-LM.git" in text
    assert "cp -r /tmp/Megatron-LM/megatron /opt/MindSpeed-LLM/" in text


def test_ascend_dockerfile_pins_the_stack():
    # Reads what render_dockerfile produces now, not the golden file: a pin dropped from the
    # template fails here even if the golden file was regenerated without reading its diff.
    text = render_dockerfile("ascend", base_image="cann-toolkit:8.0.0-py3.8")
    for pin in ('"torch==2.1.0"', '"torch_npu==2.1.0.post12"', "apex", "/opt/MindSpeed-LLM/requirements.txt", "vendor/Megatron-LM/megatron /opt/MindSpeed-LLM/megatron"):
        assert pin in text


def test_plan_json_golden(plan):
    _check_golden("plan.example.json", plan.to_json() + "\n")


def test_plan_json_has_documented_fields(plan):
    doc = json.loads(plan.to_json())
    assert doc["version"] == 1
    for host in doc["hosts"]:
        assert {"name", "address", "node_rank", "env", "docker_run", "steps"} <= set(host)
        assert all({"name", "argv"} <= set(s) for s in host["steps"])
        assert all(isinstance(a, str) for a in host["docker_run"])


def test_launch_env_per_host(plan):
    a, b = plan.hosts
    assert (a.name, a.node_rank, b.name, b.node_rank) == ("npu-a", 0, "npu-b", 1)
    for host in plan.hosts:
        env = host.env
        assert env["NNODES"] == "2" and env["NPUS_PER_NODE"] == "8" and env["WORLD_SIZE"] == "16"
        assert env["MASTER_ADDR"] == "192.0.2.11" and env["MASTER_PORT"] == "6000"
        assert env["NODE_RANK"] == str(host.node_rank)
        assert env["GLOO_SOCKET_IFNAME"] == env["HCCL_SOCKET_IFNAME"] == "enp189s0f0"
        assert env["HCCL_CONNECT_TIMEOUT"] == "1200"
        assert "GPUS_PER_NODE" not in env


def test_docker_run_carries_every_device_and_driver_mount(plan):
    run = plan.hosts[0].docker_run
    devices = [run[i + 1] for i, a in enumerate(run) if a == "--device"]
    # The job's 8 NPUs per host, no more: device_count() == npus_per_node in the container.
    assert devices == [f"/dev/davinci{i}" for i in range(8)] + ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
    assert plan.hosts[0].env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    mounts = [run[i + 1] for i, a in enumerate(run) if a == "-v"]
    for path in ("/usr/local/Ascend/driver", "/usr/local/Ascend/firmware", "/usr/local/Ascend/add-ons", "/usr/local/sbin", "/usr/bin/hccn_tool", "/var/log/npu/conf/slog/slog.conf"):
        assert f"{path}:{path}:ro" in mounts
    assert "/apps:/apps" in mounts and "/home:/home" in mounts
    assert "--privileged" not in run
    assert run[run.index("--network") + 1] == "host" and run[run.index("--ipc") + 1] == "host"
    assert run[-1] == "q7x2/qwen25-mindspeed:2.0.0"


def test_shared_storage_prepares_on_rank_0_only(plan):
    assert [s.name for s in plan.hosts[0].steps] == ["convert", "preprocess", "pretrain"]
    assert [s.name for s in plan.hosts[1].steps] == ["pretrain"]


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_conversion_and_training_share_one_parallel_setting(plan):
    convert = plan.hosts[0].step("convert").argv
    pretrain = plan.hosts[0].step("pretrain").launch["first"]
    assert _after(convert, "--target-tensor-parallel-size") == _after(pretrain, "--tensor-model-parallel-size") == "4"
    assert _after(convert, "--target-pipeline-parallel-size") == _after(pretrain, "--pipeline-model-parallel-size") == "2"
    assert _after(convert, "--save-dir") == _after(pretrain, "--load")
    assert _after(convert, "--params-dtype") == "bf16"


def test_data_path_is_what_preprocessing_writes(plan):
    pre = plan.hosts[0].step("preprocess").argv
    pretrain = plan.hosts[0].step("pretrain").launch["first"]
    assert _after(pretrain, "--data-path") == _after(pre, "--output-prefix") + "_text_document"


def test_pretrain_command_is_the_reference_launch(plan):
    for host in plan.hosts:
        step = host.step("pretrain")
        # One launch path on both flavors: the launcher decides the start point, then runs torchrun.
        assert step.argv == ["q7x2-runtime", "pretrain", "--job", "/etc/q7x2/job.json"]
        assert sorted(step.launch) == ["first", "resume"]
        for torchrun in step.launch.values():
            assert torchrun[:13] == ["torchrun", "--rdzv-conf", "timeout=300", "--nproc_per_node", "8", "--nnodes", "2", "--node_rank", str(host.node_rank), "--master_addr", "192.0.2.11", "--master_port", "6000"]
            assert torchrun[13] == "pretrain_gpt.py" and torchrun[-2:] == ["--distributed-backend", "nccl"]
            for flag, value in {"--seq-length": "4096", "--max-position-embeddings": "4096", "--micro-batch-size": "1", "--global-batch-size": "64", "--padded-vocab-size": "152064", "--rotary-base": "1000000", "--norm-epsilon": "1e-6", "--lr": "1.25e-6", "--min-lr": "1.25e-7", "--num-query-groups": "4"}.items():
                assert _after(torchrun, flag) == value, flag
            assert "--no-shared-storage" not in torchrun
            # checkpoints keep optimizer and RNG state unless the job says otherwise
            assert "--no-save-optim" not in torchrun and "--no-save-rng" not in torchrun
            assert "--use-distributed-optimizer" in torchrun
        first, resume = step.launch["first"], step.launch["resume"]
        i = first.index("--load")
        assert first[i : i + 5] == ["--load", "/apps/models/Qwen2.5-7B-mcore-tp4-pp2", "--no-load-optim", "--no-load-rng", "--finetune"]
        assert resume[i : i + 3] == ["--load", "/apps/ckpt/qwen25-7b", "--seed"]
        assert first[:i] + first[i + 5 :] == resume[:i] + resume[i + 2 :]


def test_per_node_storage_prepares_everywhere_and_says_so(tmp_path):
    text = EXAMPLE.read_text().replace("storage: shared ", "storage: per-node ")
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(text)
    plan = build_plan(load_inventory(inv_path))
    for host in plan.hosts:
        assert [s.name for s in host.steps] == ["convert", "preprocess", "pretrain"]
        assert all("--no-shared-storage" in argv for argv in host.step("pretrain").launch.values())


def test_step_containers_are_labelled(plan):
    step = plan.hosts[1].step("pretrain")
    assert step.labels == {"q7x2.job": "qwen25-7b", "q7x2.phase": "train", "q7x2.step": "pretrain", "q7x2.host": "npu-b", "q7x2.rank": "1"}
    assert step.docker_run[:5] == ["docker", "run", "-d", "--name", "q7x2-qwen25-7b-pretrain-1"]
    assert step.docker_run[-len(step.argv):] == step.argv


def test_cpu_flavor_runs_the_runtime_commands(tmp_path):
    text = EXAMPLE.read_text().replace("flavor: ascend ", "flavor: cpu ")
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(text)
    plan = build_plan(load_inventory(inv_path))
    host = plan.hosts[0]
    assert "--device" not in host.docker_run and not any("Ascend" in a for a in host.docker_run)
    assert host.step("convert").argv == [
        "q7x2-runtime", "convert", "--load-model-type", "hf", "--save-model-type", "mg",
        "--target-tensor-parallel-size", "4", "--target-pipeline-parallel-size", "2",
        "--load-dir", "/apps/models/Qwen2.5-7B", "--save-dir", "/apps/models/Qwen2.5-7B-mcore-tp4-pp2", "--params-dtype", "bf16",
        "--skip-existing",
    ]  # fmt: skip
    assert host.step("preprocess").argv[:2] == ["q7x2-runtime", "preprocess"]
    assert host.step("pretrain").argv == ["q7x2-runtime", "pretrain", "--job", "/etc/q7x2/job.json"]
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in host.env


def test_slurm_sbatch_golden():
    from q7x2_deploy.backends.slurm.script import render_sbatch

    _check_golden("job.slurm.sbatch", render_sbatch(load_inventory(GOLDEN / "inventory.slurm.yaml")))
