"""status reads the replica store's manifests with a plain sh loop on each host and decides with the
runtime's rule which iteration is fully replicated."""

from __future__ import annotations

import subprocess
from pathlib import Path

from q7x2_deploy.executor.replica_status import listing_argv, parse_listing, summarize
from q7x2_runtime.jobspec import ClusterSpec, Job, JobSpec
from q7x2_runtime.pretrain.replica import Manifest, manifest_path


def _spec(tmp: Path, replica: str | None = "store", storage: str = "per-node") -> JobSpec:
    paths = {"save_dir": str(tmp / "ckpt"), **({"replica": str(tmp / replica)} if replica else {})}
    job = Job(name="rep", storage=storage, parallelism={"tp": 2, "pp": 1, "npus_per_node": 1}, paths=paths)
    return JobSpec(job=job, cluster=ClusterSpec(nnodes=2, master_addr="10.0.0.1", master_port=6000, flavor="cpu"))


def _manifest(root: Path, node: int, n: int) -> None:
    rel = f"iter_{n:07d}/mp_rank_{node:02d}"
    m = Manifest(node, n, {f"{rel}/model_optim_rng.pt": 10, f"{rel}/distrib_optim.pt": 20})
    manifest_path(root, node, n).parent.mkdir(parents=True, exist_ok=True)
    manifest_path(root, node, n).write_text(m.to_json())


def test_the_newest_iteration_every_file_of_which_is_in_the_store(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    root = tmp_path / "store" / "rep"
    argv = listing_argv(spec)
    assert argv is not None
    assert parse_listing(subprocess.run(argv, capture_output=True, text=True, check=True).stdout) == []  # no store yet
    _manifest(root, 0, 10), _manifest(root, 1, 10), _manifest(root, 0, 20)  # node 1's copy of 20 not finished
    (root / "node-1" / "iter_0000020.json.q7x2-tmp-7").write_text("{")
    seen = parse_listing(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert sorted((m.node_rank, m.iteration) for m in seen) == [(0, 10), (0, 20), (1, 10)]
    rep = summarize(spec, {"a": seen[:1], "b": seen})
    assert rep.iteration == 10 and rep.nodes == {0: [10, 20], 1: [10]} and rep.node_iteration(1) == 10
    assert rep.to_dict()["fully_replicated_iteration"] == 10


def test_no_store_no_listing(tmp_path: Path) -> None:
    assert listing_argv(_spec(tmp_path, storage="shared", replica=None)) is None
    assert listing_argv(_spec(tmp_path, storage="shared")) is None


def test_without_a_replica_path_each_host_lists_its_own_store(tmp_path: Path) -> None:
    argv = listing_argv(_spec(tmp_path, replica=None))
    assert argv is not None and argv[-1] == str(tmp_path / "ckpt" / ".q7x2-replicas")
