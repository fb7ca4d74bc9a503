"""The sbatch script: what the shell makes of every line, with hostile inventory values.

Slurm's commands are replaced by recorders on PATH (they write the argv they got); bash runs the
rendered script and then each recorded task exactly as srun would, so the test sees the argv a
real srun and docker would get, after the shell's own quoting and expansion.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from q7x2_deploy.backends.slurm.script import build_slurm_job, render_sbatch, task_script
from q7x2_deploy.validation import load_inventory

HOSTILE = {
    "QUOTES": "it's \"quoted\" and `ticked`",
    "SUBST": "$(touch /tmp/q7x2-pwned) ${HOME} $HOME",
    "META": "a;b|c&d>e<f*g?h~i#j!k\\l",
    "SPACES": "  two  spaces  ",
    "FLAG": "--privileged",
}

RECORDER = f"""#!{sys.executable}
import json, os, sys
name = os.path.basename(sys.argv[0])
out = os.environ["Q7X2_RECORD"]
n = len([f for f in os.listdir(out) if f.startswith(name + ".")])
with open(os.path.join(out, f"{{name}}.{{n}}.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, f)
if name == "scontrol":
    print("nodeA"); print("nodeB")
sys.exit(int(os.environ.get("Q7X2_FAKE_EXIT_" + name.replace("-", "_"), "0")))
"""


def _inventory(tmp_path: Path, **slurm: object) -> Path:
    data = {
        "scheduler": {"kind": "slurm", "nodes": 2, "slurm": {"login": "login01", "gres": "gpu:npu:2", **slurm}},
        "image": {"repository": "registry.example.org:5000/q7x2/qwen25-mindspeed", "tag": "2.0.0"},
        "container": {"state_dir": str(tmp_path / "state"), "volumes": ["/apps"]},
        "job": {"name": "hostile", "parallelism": {"tp": 1, "pp": 1, "npus_per_node": 2},
                "training": {"global_batch_size": 4}, "env": {"HCCL_CONNECT_TIMEOUT": "1200", **HOSTILE}},
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _bin(tmp_path: Path, names: list[str]) -> Path:
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name in names:
        p = d / name
        p.write_text(RECORDER, encoding="utf-8")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return d


def _records(d: Path, name: str) -> list[dict]:
    return [json.loads((d / f"{name}.{i}.json").read_text()) for i in range(len(list(d.glob(f"{name}.*.json"))))]


def _run_script(tmp_path: Path, inv_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(load_inventory(inv_path)), encoding="utf-8")
    rec = tmp_path / "rec"
    rec.mkdir()
    env = {"PATH": f"{_bin(tmp_path, ['srun', 'scontrol'])}:/usr/bin:/bin", "Q7X2_RECORD": str(rec),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[A-B]"}
    r = subprocess.run(["/bin/bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    return r, rec


def test_every_srun_gets_the_argv_the_plan_holds(tmp_path):
    inv_path = _inventory(tmp_path)
    job = build_slurm_job(load_inventory(inv_path))
    r, rec = _run_script(tmp_path, inv_path)
    assert r.returncode == 0, r.stderr
    assert not Path("/tmp/q7x2-pwned").exists()
    assert _records(rec, "scontrol")[0]["argv"] == ["show", "hostnames", "node[A-B]"]
    sruns = _records(rec, "srun")
    assert [p.name for p in job.phases] == ["prepare", "train"]
    assert len(sruns) == 2
    for got, phase in zip(sruns, job.phases):
        expected = [*phase.srun[1:], "/bin/bash", "-c", task_script(), "q7x2-task", *job.task_args(), job.job_spec_json()]
        for step in phase.steps:
            expected += [step.name, phase.name, str(len(step.argv)), *step.argv]
        assert got["argv"] == expected
        assert got["env"]["MASTER_ADDR"] == "nodeA"
    # the hostile values arrive whole, as docker's -e arguments
    pretrain = job.phases[1].steps[0].argv
    for k, v in HOSTILE.items():
        assert f"{k}={v}" in pretrain
    assert "--privileged" not in [a for a in pretrain if not a.startswith("FLAG=")]


def _run_task(tmp_path: Path, srun_argv: list[str], srun_options: int, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a recorded srun's task command as one node's task would."""
    rec = tmp_path / "task-rec"
    rec.mkdir(exist_ok=True)
    bindir = _bin(tmp_path, ["docker", "q7x2-runtime"])
    full = {"PATH": f"{bindir}:/usr/bin:/bin", "Q7X2_RECORD": str(rec), "SLURM_NODEID": "1", "SLURM_JOB_ID": "4242",
            "MASTER_ADDR": "nodeA", **env}
    r = subprocess.run(srun_argv[srun_options:], env=full, capture_output=True, text=True, timeout=60)
    return r, rec


def test_the_task_starts_labeled_containers_with_the_allocation(tmp_path):
    inv_path = _inventory(tmp_path)
    job = build_slurm_job(load_inventory(inv_path))
    _, rec = _run_script(tmp_path, inv_path)
    train = _records(rec, "srun")[1]["argv"]
    r, trec = _run_task(tmp_path, train, len(job.phases[1].srun) - 1, SLURM_STEP_GPUS="4,5")
    assert r.returncode == 0, r.stderr
    docker = [c["argv"] for c in _records(trec, "docker")]
    assert docker[0] == ["ps", "-aq", "--filter", "label=q7x2.job=hostile"]
    host = os.uname().nodename
    assert docker[1] == [
        "run", "--rm", "--name", "q7x2-hostile-pretrain-1",
        "--label", "q7x2.job=hostile", "--label", "q7x2.phase=train", "--label", "q7x2.step=pretrain",
        "--label", f"q7x2.host={host}", "--label", "q7x2.rank=1", "--label", "q7x2.slurm.job=4242",
        "-e", "NODE_RANK=1", "-e", "MASTER_ADDR=nodeA", "--device", "/dev/davinci4", "--device", "/dev/davinci5",
        *job.phases[1].steps[0].argv,
    ]  # fmt: skip
    spec = json.loads((Path(job.job_dir) / "job.json").read_text())
    assert spec == json.loads(job.job_spec_json())
    assert spec["job"]["env"]["SUBST"] == HOSTILE["SUBST"]


def test_without_step_gpus_the_task_uses_the_first_npus(tmp_path):
    inv_path = _inventory(tmp_path, gres="npu:2")
    job = build_slurm_job(load_inventory(inv_path))
    _, rec = _run_script(tmp_path, inv_path)
    r, trec = _run_task(tmp_path, _records(rec, "srun")[1]["argv"], len(job.phases[1].srun) - 1)
    assert r.returncode == 0, r.stderr
    run = _records(trec, "docker")[1]["argv"]
    assert [run[i + 1] for i, a in enumerate(run) if a == "--device" and run[i + 1].startswith("/dev/davinci")][:2] == ["/dev/davinci0", "/dev/davinci1"]


def test_a_failing_step_names_the_node_and_keeps_its_status(tmp_path):
    inv_path = _inventory(tmp_path)
    job = build_slurm_job(load_inventory(inv_path))
    _, rec = _run_script(tmp_path, inv_path)
    prepare = _records(rec, "srun")[0]["argv"]
    r, trec = _run_task(tmp_path, prepare, len(job.phases[0].srun) - 1, Q7X2_FAKE_EXIT_docker="3")
    assert r.returncode == 3
    assert f"q7x2: prepare: convert failed on {os.uname().nodename} (node rank 1): exit status 3" in r.stderr
    assert len([c for c in _records(trec, "docker") if c["argv"][0] == "run"]) == 1  # preprocess never started


def test_the_script_ends_with_the_status_of_the_failed_phase(tmp_path):
    inv_path = _inventory(tmp_path)
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(load_inventory(inv_path)), encoding="utf-8")
    rec = tmp_path / "rec"
    rec.mkdir()
    env = {"PATH": f"{_bin(tmp_path, ['srun', 'scontrol'])}:/usr/bin:/bin", "Q7X2_RECORD": str(rec),
           "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "nodeA", "Q7X2_FAKE_EXIT_srun": "143"}
    r = subprocess.run(["/bin/bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 143
    assert "q7x2: phase prepare failed: exit status 143" in r.stderr
    assert len(_records(rec, "srun")) == 1  # train never submitted


def test_container_none_runs_the_runtime_with_the_environment(tmp_path):
    inv_path = _inventory(tmp_path, container="none")
    job = build_slurm_job(load_inventory(inv_path))
    _, rec = _run_script(tmp_path, inv_path)
    r, trec = _run_task(tmp_path, _records(rec, "srun")[1]["argv"], len(job.phases[1].srun) - 1)
    assert r.returncode == 0, r.stderr
    call = _records(trec, "q7x2-runtime")[0]
    assert call["argv"] == ["pretrain", "--job", f"{job.job_dir}/job.json"]
    assert call["env"]["NODE_RANK"] == "1" and call["env"]["MASTER_ADDR"] == "nodeA"
    for k, v in HOSTILE.items():
        assert call["env"][k] == v
    assert not _records(trec, "docker")


@pytest.mark.parametrize("storage", ["shared", "per-node"])
def test_prepare_runs_where_the_storage_mode_says(tmp_path, storage):
    inv_path = _inventory(tmp_path)
    data = yaml.safe_load(inv_path.read_text())
    data["job"]["storage"] = storage
    inv_path.write_text(yaml.safe_dump(data))
    prepare = build_slurm_job(load_inventory(inv_path)).phases[0].srun
    assert ("--nodes=1" in prepare) == (storage == "shared")
    assert "--kill-on-bad-exit=1" in prepare
