"""Helpers for end-to-end runs: the CLI as a subprocess, inventories derived from a sandbox's."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from q7x2_deploy.executor.metrics import losses

E2E_ROOT = "q7x2-e2e"  # every path a test job writes lives under /shared/q7x2-e2e or /data/q7x2-e2e


def cli(*args: str, cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def cli_background(*args: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "q7x2_deploy.cli", *args], cwd=cwd, stdout=out,
                            stderr=subprocess.STDOUT)


def wait_for(log: Path, text: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not seen within {timeout}s:\n{log.read_text()[-3000:]}")


def derive_inventory(base: Path, dest: Path, *, job: str, image_ref: str, port: int, storage: str = "shared",
                     distribution: str = "registry", train_iters: int | None = None,
                     **overrides: Any) -> Path:
    """The sandbox's inventory with this test's job name, image, port and private paths."""
    data = yaml.safe_load(base.read_text())
    data["job"]["name"] = job
    data["job"]["storage"] = storage
    data["master"]["port"] = port
    repo, _, tag = image_ref.rpartition(":")
    data["image"].update(repository=repo, tag=tag, distribution=distribution)
    root = f"/{'shared' if storage == 'shared' else 'data'}/{E2E_ROOT}/{job}"
    data["job"]["paths"].update(mcore_weights=f"{root}/mcore", dataset_prefix=f"{root}/datasets/alpaca",
                                save_dir=f"{root}/ckpt", logs=f"{root}/logs")
    if train_iters is not None:
        data["job"]["training"]["train_iters"] = train_iters
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def host_lines(output: str, host: str) -> list[str]:
    prefix = f"[{host} "
    return [ln.split("] ", 1)[1] for ln in output.splitlines() if ln.startswith(prefix) and "] " in ln]


def loss_curve(output: str) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    for ln in output.splitlines():
        if ln.startswith("[") and "] " in ln:
            out += losses([ln.split("] ", 1)[1]])
    return out


def iteration_dirs(save_dir: Path) -> list[str]:
    return sorted(p.name for p in save_dir.glob("iter_*")) if save_dir.is_dir() else []
