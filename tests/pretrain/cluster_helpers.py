"""Test helpers: a tiny prepared job (sample model, converted checkpoint, dataset) and a loopback
two-node launch of `q7x2-runtime pretrain`, one process per node as the containers would run it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from q7x2_runtime.jobspec import JobSpec

# Two nodes x one process: pp 2 with an uneven split is a layout Megatron accepts for a world of 2.
TP, PP, NUM_LAYER_LIST = 1, 2, [1, 3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Prepared:
    root: Path
    hf: Path
    mcore: Path  # converted at TP/PP/NUM_LAYER_LIST
    dataset_prefix: Path

    @property
    def mcore_single(self) -> Path:
        """Converted at tp 1 pp 1, for one-process runs."""
        return self.root / "mcore-tp1pp1"

    @property
    def raw_dataset(self) -> Path:
        return self.root / "sample" / "data" / "alpaca.parquet"


def _run_step(argv: list[str]) -> None:
    """Run a `q7x2-runtime ...` step command exactly as q7x2_runtime.steps builds it."""
    assert argv[0] == "q7x2-runtime"
    proc = subprocess.run([sys.executable, "-m", "q7x2_runtime.cli", *argv[1:]], capture_output=True, text=True)
    assert proc.returncode == 0, f"{argv[:2]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def prepare(root: Path, *, steps: bool = True) -> Prepared:
    """The sample, converted to mcore at the job's tp/pp and preprocessed, by the cpu-flavor step commands."""
    from q7x2_runtime import steps as step_commands
    from q7x2_runtime.sample import make_sample

    make_sample(root / "sample")
    p = Prepared(root, root / "sample" / "model", root / "mcore", root / "data" / "alpaca")
    if steps:
        job = JobSpec.load(write_job(p, "prepare", port=1)).job
        _run_step(step_commands.convert_argv(job, "cpu"))
        _run_step(step_commands.preprocess_argv(job, "cpu"))
        single = JobSpec.load(write_job(p, "prepare-single", port=1, nnodes=1, layout=(1, 1, None))).job
        _run_step(step_commands.convert_argv(single, "cpu"))
    return p


def write_job(p: Prepared, run: str, *, port: int, nnodes: int = 2, npus_per_node: int = 1, train_iters: int = 30,
              save_interval: int = 10, connect_timeout_s: int = 60, layout: tuple[int, int, list[int] | None] | None = None,
              checkpoint: dict | None = None, storage: str = "shared", **training) -> Path:
    """A job over the prepared sample; one-node jobs default to tp 1 pp 1 (and its conversion)."""
    from q7x2_runtime.model_dims import dims_from_hf_config

    t = {"seq_length": 64, "micro_batch_size": 2, "global_batch_size": 8, "train_iters": train_iters,
         "lr": 2e-3, "min_lr": 2e-4, "lr_warmup_fraction": 0.1, "save_interval": save_interval, "seed": 1234}
    t.update(training)
    tp, pp, nll = layout if layout is not None else ((TP, PP, NUM_LAYER_LIST) if nnodes * npus_per_node > 1 else (1, 1, None))
    mcore = p.mcore if (tp, pp, nll) == (TP, PP, NUM_LAYER_LIST) else p.mcore_single
    spec = JobSpec.model_validate({
        "job": {
            "name": "tiny",
            "model": {"dims": dims_from_hf_config(p.hf).model_dump()},
            "parallelism": {"tp": tp, "pp": pp, "num_layer_list": nll, "npus_per_node": npus_per_node},
            "storage": storage,
            "checkpoint": checkpoint or {},
            "training": t,
            "preprocess": {"workers": 1},
            "paths": {"hf_weights": str(p.hf), "mcore_weights": str(mcore), "dataset_prefix": str(p.dataset_prefix),
                      "raw_dataset": str(p.raw_dataset),
                      "save_dir": str(p.root / run / "ckpt"), "logs": str(p.root / run / "logs")},
        },
        "cluster": {"nnodes": nnodes, "master_addr": "127.0.0.1", "master_port": port, "flavor": "cpu",
                    "connect_timeout_s": connect_timeout_s},
    })  # fmt: skip
    path = p.root / f"{run}.json"
    path.write_text(spec.to_json())
    return path


@dataclass
class NodeResult:
    node_rank: int
    returncode: int
    output: str
    seconds: float


def launch_node(job: Path, node_rank: int, out: Path, *extra: str) -> subprocess.Popen:
    spec = JobSpec.load(job)
    env = {
        **os.environ,
        "NODE_RANK": str(node_rank),
        "NNODES": str(spec.cluster.nnodes),
        "MASTER_ADDR": spec.cluster.master_addr,
        "MASTER_PORT": str(spec.cluster.master_port),
        "NPUS_PER_NODE": str(spec.job.parallelism.npus_per_node),
        "WORLD_SIZE": str(spec.world_size),
        "GLOO_SOCKET_IFNAME": "lo",
    }
    argv = [sys.executable, "-m", "q7x2_runtime.cli", "pretrain", "--job", str(job), *extra]
    return subprocess.Popen(argv, env=env, stdout=open(out, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def run_nodes(job: Path, ranks: list[int], *extra: str, timeout: float = 600) -> list[NodeResult]:
    started = time.monotonic()
    outs = [job.parent / f"{job.stem}.node{r}.out" for r in ranks]
    procs = [launch_node(job, r, o, *extra) for r, o in zip(ranks, outs)]
    results = []
    try:
        for r, proc, o in zip(ranks, procs, outs):
            code = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
            results.append(NodeResult(r, code, o.read_text(errors="replace"), time.monotonic() - started))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    return results
