"""The per-node replicator: who writes and reads which file, partial files never replicated, a copy
never looks finished before it is, and a host that lost its save_dir gets it back."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import pytest
import torch

from q7x2_runtime.convert.layout import TRACKER, read_latest_iteration, write_tracker
from q7x2_runtime.jobspec import ClusterSpec, Job, JobSpec
from q7x2_runtime.pretrain import replica_copy
from q7x2_runtime.pretrain.complete import Layout
from q7x2_runtime.pretrain.replica import (
    PEER_STORE_DIR,
    Manifest,
    NodeShare,
    latest_fully_replicated,
    manifest_path,
    next_host,
    node_dir,
    read_manifests,
    replicates_to_next_host,
)
from q7x2_runtime.pretrain.replica_sync import Replicator, ReplicaSync, restore_for_job

P = PurePosixPath


def _spec(tmp: Path, node: int, *, nnodes: int = 2, npn: int = 1, tp: int = 1, pp: int = 1) -> JobSpec:
    job = Job(name="rep", storage="per-node", parallelism={"tp": tp, "pp": pp, "npus_per_node": npn},
              paths={"save_dir": str(tmp / f"host{node}" / "ckpt"), "replica": str(tmp / "replica")})
    return JobSpec(job=job, cluster=ClusterSpec(nnodes=nnodes, master_addr="10.0.0.1", master_port=6000, flavor="cpu"))


def _sync(tmp: Path, node: int, **kw) -> ReplicaSync:  # type: ignore[no-untyped-def]
    s = ReplicaSync.for_job(_spec(tmp, node, **kw), node, log=lambda _m: None)
    assert s is not None
    return s


def _save(save_dir: Path, rels: list[P], tag: float) -> None:
    for rel in rels:
        (save_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.full((4,), tag), "name": str(rel)}, save_dir / rel)


def _megatron_save(tmp: Path, n: int, nodes: int = 2, **kw) -> None:  # type: ignore[no-untyped-def]
    """What Megatron leaves on each host after saving iteration n: each node's own files, the
    tracker on node 0 only."""
    for k in range(nodes):
        s = _sync(tmp, k, nnodes=nodes, **kw)
        _save(s.save_dir, s.share.written(n), float(n))
    write_tracker(_sync(tmp, 0, nnodes=nodes, **kw).save_dir, n)


def test_who_writes_and_reads_what() -> None:
    # The sandbox's layout: tp 1, pp 1 on 2 hosts x 1 process: dp 2 across the hosts.
    lay = Layout(1, 1, True)
    n0, n1 = NodeShare(lay, 0, 1, 2), NodeShare(lay, 1, 1, 2)
    assert n0.written(10) == [P("iter_0000010/mp_rank_00/model_optim_rng.pt"), P("iter_0000010/mp_rank_00/distrib_optim.pt")]
    assert n1.written(10) == []
    assert n1.read(10) == [P("iter_0000010/mp_rank_00/model_optim_rng.pt")]  # dp rank 1 reads dp 0's model file
    # inventory.example.yaml's layout: tp 4, pp 2 on 2 hosts x 8: each host is one pipeline stage.
    lay = Layout(4, 2, True)
    a, b = NodeShare(lay, 0, 8, 2), NodeShare(lay, 1, 8, 2)
    assert {f.parent.name for f in a.written(1)} == {f"mp_rank_0{t}_000" for t in range(4)}
    assert {f.parent.name for f in b.written(1)} == {f"mp_rank_0{t}_001" for t in range(4)}
    assert set(a.read(1)) <= set(a.written(1)) and set(b.read(1)) <= set(b.written(1))
    assert sorted(map(str, a.written(1) + b.written(1))) == sorted(map(str, lay.files(1)))


def test_partial_files_are_never_replicated(tmp_path: Path) -> None:
    s0 = _sync(tmp_path, 0)
    rels = s0.share.written(10)
    _save(s0.save_dir, rels, 1.0)
    whole = (s0.save_dir / rels[1]).read_bytes()
    (s0.save_dir / rels[1]).write_bytes(whole[: len(whole) // 2])  # torch.save cut short
    assert s0.push() == []
    assert read_manifests(s0.root) == []
    (s0.save_dir / rels[1]).write_bytes(whole)
    assert s0.push() == [10]
    [m] = read_manifests(s0.root)
    assert (m.node_rank, m.iteration, sorted(m.files)) == (0, 10, sorted(map(str, rels)))
    assert latest_fully_replicated(read_manifests(s0.root), s0.share.layout) == 10


def test_a_copy_interrupted_midway_leaves_nothing_that_looks_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s0 = _sync(tmp_path, 0)
    _save(s0.save_dir, s0.share.written(10), 1.0)
    real = shutil.copyfileobj

    def dies_halfway(fi, fo, length=0):  # type: ignore[no-untyped-def]
        fo.write(fi.read(100))
        raise OSError("No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", dies_halfway)
    with pytest.raises(OSError):
        s0.push()
    monkeypatch.setattr(shutil, "copyfileobj", real)
    base = node_dir(s0.root, 0)
    assert not manifest_path(s0.root, 0, 10).exists()
    assert [p for p in base.rglob("*") if p.is_file()] == []  # no temporary file, no half file
    assert s0.push() == [10]  # the next pass copies it whole


def test_a_copy_without_its_manifest_does_not_count(tmp_path: Path) -> None:
    s0 = _sync(tmp_path, 0)
    _save(s0.save_dir, s0.share.written(10), 1.0)
    s0.push()
    manifest_path(s0.root, 0, 10).unlink()
    assert latest_fully_replicated(read_manifests(s0.root), s0.share.layout) is None
    garbage = manifest_path(s0.root, 0, 20)
    garbage.write_text('{"format": 1, "node_rank": 0, "iteration": 20, "files": {')  # torn write
    assert [m.iteration for m in read_manifests(s0.root)] == []
    assert Manifest.from_json('{"format": 2, "node_rank": 0, "iteration": 1, "files": {}}') is None


def test_after_a_save_every_host_holds_the_tracker_and_what_its_ranks_read(tmp_path: Path) -> None:
    _megatron_save(tmp_path, 10)
    s0, s1 = _sync(tmp_path, 0), _sync(tmp_path, 1)
    assert not (s1.save_dir / TRACKER).exists()
    s1.sync_once(engine_running=True)  # node 1 first: nothing replicated yet, nothing to fill
    assert not (s1.save_dir / TRACKER).exists()
    s0.sync_once(engine_running=True)
    s1.sync_once(engine_running=True)
    assert read_latest_iteration(s1.save_dir) == 10
    for rel in s1.share.layout.files(10):  # the whole iteration: the launchers' completeness rule
        assert torch.load(s1.save_dir / rel, weights_only=True)["w"][0] == 10.0


def test_node_0_leaves_the_tracker_to_megatron_while_training(tmp_path: Path) -> None:
    _megatron_save(tmp_path, 10)
    s0 = _sync(tmp_path, 0)
    s0.push()
    write_tracker(s0.save_dir, 20)  # Megatron has just saved 20 (its copy is not finished yet)
    s0.sync_once(engine_running=True)
    assert read_latest_iteration(s0.save_dir) == 20
    (s0.save_dir / TRACKER).unlink()
    s0.sync_once(engine_running=True)
    assert not (s0.save_dir / TRACKER).exists()
    s0.sync_once(engine_running=False)
    assert read_latest_iteration(s0.save_dir) == 10


@pytest.mark.parametrize("lost", [0, 1])
def test_a_host_that_lost_its_save_dir_gets_it_back(tmp_path: Path, lost: int) -> None:
    for n in (10, 20):
        _megatron_save(tmp_path, n)
        for k in (0, 1):
            _sync(tmp_path, k).sync_once(engine_running=False)
    s = _sync(tmp_path, lost)
    before = {p.relative_to(s.save_dir): p.read_bytes() for p in s.save_dir.rglob("*") if p.is_file()}
    shutil.rmtree(s.save_dir.parent)
    assert restore_for_job(_spec(tmp_path, lost), lost, log=lambda _m: None) == 20
    after = {p.relative_to(s.save_dir): p.read_bytes() for p in s.save_dir.rglob("*") if p.is_file()}
    newest = {rel: data for rel, data in before.items() if rel.parts[0] != "iter_0000010"}
    assert after == newest  # iteration 20 and the tracker, byte for byte


def test_restore_never_replaces_a_newer_local_tracker(tmp_path: Path) -> None:
    _megatron_save(tmp_path, 10)
    s0 = _sync(tmp_path, 0)
    s0.push()
    _save(s0.save_dir, s0.share.written(20), 20.0)
    write_tracker(s0.save_dir, 20)
    manifests_before = len(read_manifests(s0.root))
    assert s0.restore() == 20  # 20 was finished here but not copied yet: restore copies it first
    assert len(read_manifests(s0.root)) == manifests_before + 1
    assert read_latest_iteration(s0.save_dir) == 20


def test_only_the_two_newest_replicated_iterations_are_kept(tmp_path: Path) -> None:
    s0 = _sync(tmp_path, 0)
    for n in (10, 20, 30, 40):
        _megatron_save(tmp_path, n)
        s0.sync_once(engine_running=True)
    assert sorted(m.iteration for m in read_manifests(s0.root)) == [30, 40]
    assert sorted(p.name for p in node_dir(s0.root, 0).iterdir()) == [
        "iter_0000030", "iter_0000030.json", "iter_0000040", "iter_0000040.json"]


def test_the_replicator_thread_copies_the_last_save_when_stopped(tmp_path: Path) -> None:
    s0 = _sync(tmp_path, 0)
    rep = Replicator(s0, poll_s=3600).start()  # the loop never fires: only the final pass
    _megatron_save(tmp_path, 30)
    rep.stop()
    assert latest_fully_replicated(read_manifests(s0.root), s0.share.layout) == 30


def test_leftover_temporary_files_are_removed(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    (d / f"model_optim_rng.pt{replica_copy.TMP_MARK}123").write_bytes(b"half")
    (d / "keep.pt").write_bytes(b"x")
    replica_copy.remove_leftovers(tmp_path)
    assert [p.name for p in d.iterdir()] == ["keep.pt"]


def test_shared_storage_does_not_replicate_and_no_replica_path_means_the_host_local_store(tmp_path: Path) -> None:
    spec = _spec(tmp_path, 0)
    shared = spec.model_copy(update={"job": spec.job.model_copy(update={"storage": "shared"})})
    assert ReplicaSync.for_job(shared, 0) is None
    no_path = spec.model_copy(update={"job": spec.job.model_copy(update={"paths": spec.job.paths.model_copy(update={"replica": None})})})
    s = ReplicaSync.for_job(no_path, 0)
    assert s is not None and s.root == Path(no_path.job.paths.save_dir) / PEER_STORE_DIR
    assert replicates_to_next_host(no_path) and not replicates_to_next_host(spec) and not replicates_to_next_host(shared)
    assert [next_host(r, 3) for r in range(3)] == [1, 2, 0]
    _megatron_save(tmp_path, 10)
    s.push()  # the store lives in save_dir, where no resume rule looks (only iter_NNNNNNN entries)
    assert [m.iteration for m in read_manifests(s.root)] == [10]
    from q7x2_runtime.pretrain.complete import iterations_present

    assert iterations_present(s.save_dir) == [10]


def _peer_sync(tmp: Path, node: int) -> ReplicaSync:
    spec = _spec(tmp, node, tp=2)
    spec = spec.model_copy(update={"job": spec.job.model_copy(update={"paths": spec.job.paths.model_copy(update={"replica": None})})})
    s = ReplicaSync.for_job(spec, node, log=lambda _m: None)
    assert s is not None
    return s


def test_a_finished_node_waits_for_the_next_hosts_copy_of_the_last_save(tmp_path: Path) -> None:
    s0, s1 = _peer_sync(tmp_path, 0), _peer_sync(tmp_path, 1)
    for s in (s0, s1):
        _save(s.save_dir, s.share.written(30), 30.0)
        s.push()
    rep = Replicator(s1, poll_s=0.05).start()

    def _deployer() -> None:  # node 0's finished copy arrives on host 1 a little later
        import time

        time.sleep(0.3)
        shutil.copytree(node_dir(s0.root, 0), node_dir(s1.root, 0))

    import threading

    th = threading.Thread(target=_deployer)
    th.start()
    assert rep.wait_for_next_host(timeout_s=30) == 30
    th.join()
    rep.stop()
    assert read_latest_iteration(s1.save_dir) == 30
    assert (s1.save_dir / "iter_0000030" / "mp_rank_00" / "model_optim_rng.pt").is_file()
    # Nobody copies: the wait is bounded and says so; what the node wrote stays.
    lone = Replicator(_peer_sync(tmp_path / "b", 1), poll_s=0.05)
    _save(lone.sync.save_dir, lone.sync.share.written(30), 30.0)
    assert lone.start().wait_for_next_host(timeout_s=0.2) is None
    lone.stop()
