"""The project's sample checkpoint and dataset, placed on /shared and on every host's /data."""

from __future__ import annotations

import shutil
from pathlib import Path

from q7x2_deploy.sandbox.config import SandboxConfig
from q7x2_deploy.sandbox.inventory_file import sample_dir


def ensure_sample(cfg: SandboxConfig, host_data_dirs: list[Path], log=print) -> bool:
    """Write the sample once into /shared/sample and copy it to each host's /data/sample."""
    shared = sample_dir(cfg)
    if not (shared / "model" / "config.json").exists() or not (shared / "data").exists():
        try:
            from q7x2_runtime.sample import make_sample  # heavy imports: only when needed
        except ImportError as e:
            log(f"sample data skipped: q7x2_runtime.sample is not available ({e})")
            return False
        log("writing the sample checkpoint and dataset to /shared/sample")
        make_sample(shared)
    for data in host_data_dirs:
        target = data / "sample"
        if not (target / "model" / "config.json").exists():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(shared, target, symlinks=True)
    return True
