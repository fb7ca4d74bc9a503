"""inventory.sandbox.yaml: the sandbox described in the deployer's own inventory format."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from q7x2_deploy.sandbox.config import SandboxConfig

MARKER = "# Written by `q7x2-deploy sandbox up`"
IMAGE_NAME = "q7x2/qwen25-cpu"


def sample_dir(cfg: SandboxConfig) -> Path:
    """Where the sample checkpoint and dataset live on the operator side (= /shared/sample)."""
    return cfg.shared_dir / "sample"


def _tag() -> str:
    try:
        return metadata.version("q7x2-deploy")
    except metadata.PackageNotFoundError:
        return "dev"


def build(cfg: SandboxConfig, count: int, npus_per_node: int = 1, slurm: bool = False, bastion: bool = False) -> dict:
    dp = count * npus_per_node  # tp = pp = 1
    # Behind a bastion every SSH setting comes from the sandbox's ssh_config (ProxyJump included).
    ssh = ({"config": str(cfg.ssh_config)} if bastion else
           {"user": "root", "port": 22, "identity": str(cfg.identity), "known_hosts": str(cfg.known_hosts)})
    data: dict[str, Any] = {
        "ssh": ssh,
        "hosts": [{"name": cfg.host(i).name, "address": cfg.host(i).address, "nic": cfg.host(i).nic}
                  for i in range(1, count + 1)],
        "master": {"host": cfg.host(1).name, "port": 6000},
        "image": {"repository": f"{cfg.registry_address}/{IMAGE_NAME}", "tag": _tag(),
                  "flavor": "cpu", "distribution": "registry"},
        "container": {"name_prefix": "q7x2", "devices": 0, "volumes": ["/shared", "/data"], "shm_size": "1g"},
        "job": {
            "name": "sandbox",
            "model": {"hf_config": str(sample_dir(cfg) / "model" / "config.json")},
            "parallelism": {"tp": 1, "pp": 1, "npus_per_node": npus_per_node},
            "training": {"seq_length": 64, "micro_batch_size": 1, "global_batch_size": 2 * dp,
                         "train_iters": 30, "save_interval": 10, "lr": 3.0e-4, "min_lr": 3.0e-5,
                         "lr_warmup_fraction": 0.1, "params_dtype": "fp32"},
            "paths": {"hf_weights": "/shared/sample/model",
                      "mcore_weights": "/shared/q7x2/mcore/sample-tp1-pp1",
                      "raw_dataset": "/shared/sample/data/alpaca.parquet",
                      "dataset_prefix": "/shared/q7x2/datasets/alpaca",
                      "save_dir": "/shared/q7x2/ckpt/sandbox",
                      "logs": "/shared/q7x2/logs"},
            "storage": "shared",
            "preprocess": {"workers": 1},
        },
    }
    if slurm:
        # Slurm places the job: the hosts stay listed so that node names have addresses and SSH
        # settings (for `logs` and the container sweep of `down`), without per-host placement.
        for h in data["hosts"]:
            del h["nic"]
        del data["master"]["host"]
        del data["container"]["devices"]  # the allocation's NPUs (none on cpu)
        data["scheduler"] = {"kind": "slurm", "nodes": count,
                             "slurm": {"login": cfg.host(1).name, "partition": "sandbox", "time": "60",
                                       "container": "docker", "output_dir": "/shared/q7x2/slurm"}}
    return data


def check(data: dict) -> str | None:
    """Validate with the deployer's models when they load; return the problem, if any."""
    try:
        from q7x2_deploy.inventory import Inventory
    except ImportError:
        return None
    try:
        Inventory.model_validate(data)
    except Exception as e:  # noqa: BLE001 - report, do not fail `sandbox up`
        return str(e).splitlines()[0]
    return None


def write(path: Path, cfg: SandboxConfig, count: int, npus_per_node: int = 1, slurm: bool = False,
          bastion: bool = False) -> str | None:
    data = build(cfg, count, npus_per_node, slurm, bastion)
    header = (f"{MARKER} (sandbox {cfg.name!r}); `sandbox down` removes it.\n"
              f"# {count} sandbox hosts on {cfg.subnet}; images are pushed to and pulled from "
              f"{cfg.registry_address}.\n")
    if bastion:
        header += f"# The hosts are reached through {cfg.bastion().name} (ProxyJump in {cfg.ssh_config}).\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False), encoding="utf-8")
    return check(data)


def is_ours(path: Path) -> bool:
    try:
        return path.read_text(encoding="utf-8").startswith(MARKER)
    except OSError:
        return False
