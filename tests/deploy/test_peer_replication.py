"""Per-node storage without a replica path: each node's finished copies go to the next host through
the deployer. The plans are checked as values; the copies run with real tar and sh between two
"hosts" that are directories of this machine behind a minimal Transport (the same absolute paths
on every host, as on a cluster, mapped to a directory of each host)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import torch

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.peer_replication import Mirror, PeerCopy, PeerDrop, plan_mirror, plan_restore
from q7x2_deploy.executor.replica_status import listing_argv, parse_listing, summarize
from q7x2_deploy.inventory import parse_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.transport.base import CommandResult, RemoteProcess, Transport
from tests.deploy.local_process import LocalProcess
from q7x2_runtime.convert.layout import TRACKER, read_latest_iteration, write_tracker
from q7x2_runtime.pretrain.complete import Layout, missing_files
from q7x2_runtime.pretrain.replica import PEER_STORE_DIR, Manifest, NodeShare, held_twice, replica_root
from q7x2_runtime.pretrain.replica_sync import ReplicaSync

from tests.foundation.test_validation import edited

ROOT = "/apps"  # every job path of the example inventory is under it


class _DirHost(Transport):
    """A host whose filesystem is `base`: every argument naming a path under ROOT is mapped there."""

    def __init__(self, host: str, base: Path) -> None:
        self.host, self.base = host, base
        self.commands: list[list[str]] = []

    def _map(self, argv: Sequence[str]) -> list[str]:
        self.commands.append(list(argv))
        return [str(self.base) + a if a.startswith(ROOT + "/") else a for a in argv]

    def start(self, argv: Sequence[str], *, merge_stderr: bool = True) -> RemoteProcess:
        return LocalProcess(self._map(argv), merge_stderr=False)

    def run(self, argv: Sequence[str], *, stdin: bytes | Iterable[bytes] | None = None,
            timeout: float | None = 60.0) -> CommandResult:
        data = stdin if isinstance(stdin, bytes) or stdin is None else b"".join(stdin)
        r = subprocess.run(self._map(argv), input=data, capture_output=True, timeout=timeout)
        return CommandResult(tuple(argv), r.returncode, r.stdout.decode(), r.stderr.decode())

    def ping(self, timeout: float = 10.0) -> None: ...

    def close(self) -> None: ...


def _cluster(tmp: Path, nodes: int = 2) -> Cluster:
    data = edited(image__flavor="cpu", job__storage="per-node", job__parallelism__tp=2, job__parallelism__pp=1,
                  job__parallelism__npus_per_node=1)
    data["hosts"] = [{"name": f"h{k}", "address": f"10.0.0.{k + 1}"} for k in range(nodes)]
    data["master"]["host"] = "h0"
    plan = build_plan(parse_inventory(data))
    return Cluster(plan, {h.name: _DirHost(h.name, tmp / h.name) for h in plan.hosts})


def _local(cluster: Cluster, tmp: Path, k: int) -> ReplicaSync:
    """The container's replicator on host k, on that host's directory."""
    spec = cluster.plan.job_spec
    save_dir = tmp / f"h{k}" / spec.job.paths.save_dir.lstrip("/")
    return ReplicaSync(save_dir, save_dir / PEER_STORE_DIR, NodeShare.of(spec, k), log=lambda _m: None)


def _save(cluster: Cluster, tmp: Path, n: int) -> None:
    """Megatron's save on each host: its own half (tp 2 over 2 hosts), the tracker on node 0."""
    for k in range(2):
        s = _local(cluster, tmp, k)
        for rel in s.share.written(n):
            (s.save_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            torch.save({"w": torch.full((4,), float(n + k))}, s.save_dir / rel)
    write_tracker(_local(cluster, tmp, 0).save_dir, n)


def _m(node: int, n: int) -> Manifest:
    return Manifest(node, n, {f"iter_{n:07d}/mp_rank_{node:02d}/model_optim_rng.pt": 10})


def test_each_node_copy_goes_to_the_next_host_once() -> None:
    seen = {0: [_m(0, 10), _m(0, 20), _m(2, 10)], 1: [_m(1, 10), _m(0, 10)], 2: [_m(2, 10), _m(1, 10)]}
    copies, drops = plan_mirror(3, seen, Layout(3, 1, False))
    assert copies == [PeerCopy(_m(0, 20), 0, 1)] and drops == []
    # host 1 lost: node 0's copies wait; node 1's copies on host 2 are kept (they may be all that is left)
    copies, drops = plan_mirror(3, {0: seen[0], 2: seen[2]}, Layout(3, 1, False))
    assert copies == [] and drops == []
    assert plan_mirror(1, {0: [_m(0, 10)]}, Layout(1, 1, False)) == ([], [])


def test_the_next_host_drops_copies_older_than_all_its_writer_kept() -> None:
    seen = {0: [_m(0, 30), _m(0, 40), _m(1, 10), _m(1, 20)], 1: [_m(1, 20), _m(0, 10), _m(0, 30)]}
    copies, drops = plan_mirror(2, seen, Layout(2, 1, False))
    assert copies == [PeerCopy(_m(0, 40), 0, 1)]
    assert drops == [PeerDrop(1, 0, 10), PeerDrop(0, 1, 10)]
    assert plan_mirror(2, {0: [], 1: seen[1]}, Layout(2, 1, False))[1] == []  # a wiped writer removes nothing on the next host


def test_a_nodes_own_copies_go_only_once_two_newer_iterations_are_on_two_hosts() -> None:
    lay = Layout(2, 1, False)
    both = [_m(0, n) for n in (10, 20, 30)] + [_m(1, n) for n in (10, 20, 30)]
    seen = {0: [*both, _m(0, 40)], 1: [*both, _m(1, 40)]}
    copies, drops = plan_mirror(2, seen, lay)
    assert sorted(copies, key=lambda c: c.source) == [PeerCopy(_m(0, 40), 0, 1), PeerCopy(_m(1, 40), 1, 0)]
    # 20 and 30 are held twice: each node's own 10 goes, and then its copy of 10 on the next host
    assert sorted(drops, key=lambda d: (d.host, d.node_rank)) == [
        PeerDrop(0, 0, 10), PeerDrop(0, 1, 10), PeerDrop(1, 0, 10), PeerDrop(1, 1, 10)]
    # Host 1 holds node 0's copies, but host 0 has none of node 1's yet: host 1's own copies are
    # the only ones of node 1 and stay, however many iterations host 1 sees whole.
    early = {0: [_m(0, n) for n in (10, 20, 30, 40)], 1: [_m(1, n) for n in (10, 20, 30, 40)] + [_m(0, n) for n in (10, 20, 30, 40)]}
    copies, drops = plan_mirror(2, early, lay)
    assert drops == [] and {(c.source, c.manifest.iteration) for c in copies} == {(1, n) for n in (10, 20, 30, 40)}
    # a host not answering: nothing is pruned anywhere
    assert plan_mirror(2, {0: seen[0]}, lay) == ([], [])


def test_a_wiped_host_or_a_spare_gets_every_copy_of_the_newest_whole_iteration() -> None:
    lay = Layout(2, 1, False)
    whole = {0: [_m(0, 10), _m(1, 10)], 1: [_m(1, 10), _m(0, 10), _m(1, 20)]}
    assert plan_restore(lay, whole) == (10, [])  # every store already holds 10 whole
    n, copies = plan_restore(lay, {0: [], 1: whole[1]})
    assert n == 10 and copies == [PeerCopy(_m(0, 10), 1, 0), PeerCopy(_m(1, 10), 1, 0)]
    assert plan_restore(lay, {0: [], 1: [_m(1, 20)]}) == (None, [])  # nothing whole anywhere


def test_fully_replicated_means_every_file_on_two_hosts() -> None:
    lay = Layout(2, 1, False)
    own = {"h0": [_m(0, 10)], "h1": [_m(1, 10)]}
    assert held_twice(own, lay) == []  # together whole, but one host's loss would lose half
    assert held_twice({"h0": [_m(0, 10), _m(1, 10)], "h1": [_m(1, 10), _m(0, 10)]}, lay) == [10]
    assert held_twice({"h0": [_m(0, 10), _m(1, 10)]}, lay) == [10]  # one host: its own copy is all


def test_copies_reach_the_next_host_restore_a_wiped_one_and_status_agrees(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    spec = cluster.plan.job_spec
    assert replica_root(spec) == Path(spec.job.paths.save_dir) / PEER_STORE_DIR
    said: list[str] = []
    mirror = Mirror.for_cluster(cluster, said.append)
    assert mirror is not None
    _save(cluster, tmp_path, 10)
    for k in range(2):
        _local(cluster, tmp_path, k).sync_once(engine_running=False)
    assert summarize(spec, _listings(cluster), {"h0": 0, "h1": 1}).iteration is None  # each half on one host
    mirror.mirror_once()
    assert any("node 0's iteration 10 copied from h0 to h1" in s for s in said), said
    rep = summarize(spec, _listings(cluster), {"h0": 0, "h1": 1})
    assert rep.iteration == 10 and rep.nodes == {0: [10], 1: [10]} and rep.location.startswith("next host")
    # The containers' next pass fills each save_dir from its own store: the tracker and both halves.
    for k in range(2):
        s = _local(cluster, tmp_path, k)
        s.sync_once(engine_running=False)
        assert read_latest_iteration(s.save_dir) == 10 and missing_files(s.save_dir, Layout.of(spec.job), 10) == []
    h0 = _local(cluster, tmp_path, 0)
    before = {p.relative_to(h0.save_dir): p.read_bytes() for p in h0.save_dir.glob("iter_*/*/*")}
    # Host 0's data directory is lost: its store comes back from host 1, then its save_dir.
    shutil.rmtree(tmp_path / "h0")
    assert mirror.restore() == 10
    assert h0.restore() == 10
    after = {p.relative_to(h0.save_dir): p.read_bytes() for p in h0.save_dir.glob("iter_*/*/*")}
    assert after == before and read_latest_iteration(h0.save_dir) == 10 and (h0.save_dir / TRACKER).is_file()
    assert any("iteration 10 restored into the replica store of h0" in s for s in said), said
    told = len(said)
    mirror.mirror_once()  # both stores hold both copies again: nothing is owed
    assert len(said) == told, said[told:]


def test_a_stream_cut_short_leaves_no_manifest_and_is_reported(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    _save(cluster, tmp_path, 10)
    s0 = _local(cluster, tmp_path, 0)
    s0.sync_once(engine_running=False)
    for f in (s0.root / "node-0" / "iter_0000010").rglob("*.pt"):
        f.unlink()  # the source copy is gone under the manifest: tar fails
    said: list[str] = []
    mirror = Mirror.for_cluster(cluster, said.append)
    assert mirror is not None
    with pytest.raises(DeployError):
        mirror.mirror_once()
    assert not list((tmp_path / "h1").rglob("iter_*.json"))
    mirror.stop(final_pass=True)  # the loop's error path: reported once, never raised
    assert said and "retrying" in said[-1]


def test_every_path_reaches_the_host_as_an_argument_never_as_shell_text(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    _save(cluster, tmp_path, 10)
    _local(cluster, tmp_path, 0).sync_once(engine_running=False)
    mirror = Mirror.for_cluster(cluster, lambda _m: None)
    assert mirror is not None
    mirror.mirror_once()
    for t in cluster.transports.values():
        assert isinstance(t, _DirHost)
        for argv in t.commands:
            if argv[:2] == ["sh", "-c"]:
                assert ROOT not in argv[2]  # the script names $1..; paths follow it as arguments


def test_shared_storage_and_replica_paths_need_no_mirror(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    job = cluster.plan.job_spec.job
    for changed in (job.model_copy(update={"storage": "shared"}),
                    job.model_copy(update={"paths": job.paths.model_copy(update={"replica": "/apps/replica"})})):
        cluster.plan = dataclasses.replace(cluster.plan, job_spec=cluster.plan.job_spec.model_copy(update={"job": changed}))
        assert Mirror.for_cluster(cluster, lambda _m: None) is None


def _listings(cluster: Cluster) -> dict[str, list[Manifest]]:
    argv = listing_argv(cluster.plan.job_spec)
    assert argv is not None
    return {h.name: parse_listing(cluster.transport(h).check(argv).stdout) for h in cluster.hosts}


def test_a_failed_phase_does_not_wait_long_for_a_copy_under_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from q7x2_deploy.executor import peer_replication

    cluster = _cluster(tmp_path)
    mirror = Mirror.for_cluster(cluster, lambda _m: None)
    assert mirror is not None
    release = threading.Event()
    monkeypatch.setattr(peer_replication, "STOP_WAIT_S", 0.2)
    monkeypatch.setattr(mirror, "mirror_once", lambda: release.wait(30))  # a stream that does not end
    mirror.poll_s = 0.01
    mirror.start()
    time.sleep(0.1)
    started = time.monotonic()
    mirror.stop(final_pass=False)
    assert time.monotonic() - started < 5
    release.set()


class _Lost(_DirHost):
    def run(self, argv: Sequence[str], *, stdin: bytes | Iterable[bytes] | None = None,
            timeout: float | None = 60.0) -> CommandResult:
        from q7x2_deploy.transport import HostUnreachable

        raise HostUnreachable("no route to host", host=self.host)


def test_collect_takes_a_lost_hosts_files_from_the_next_hosts_copy(tmp_path: Path) -> None:
    from q7x2_deploy.executor.collect import collect

    cluster = _cluster(tmp_path)
    _save(cluster, tmp_path, 10)
    for k in range(2):
        _local(cluster, tmp_path, k).push()  # host 1's save_dir holds its own half only
    mirror = Mirror.for_cluster(cluster, lambda _m: None)
    assert mirror is not None
    mirror.mirror_once()
    cluster.transports["h0"] = _Lost("h0", tmp_path / "h0")
    said: list[str] = []
    dest = tmp_path / "collected"
    assert collect(cluster, dest, None, said.append) == 10
    assert "iter_0000010/mp_rank_00/model_optim_rng.pt: from h1 (replica node-0)" in said
    assert read_latest_iteration(dest) == 10 and missing_files(dest, Layout.of(cluster.plan.job_spec.job), 10) == []
    original = _local(cluster, tmp_path, 0).save_dir / "iter_0000010" / "mp_rank_00" / "model_optim_rng.pt"
    assert (dest / "iter_0000010" / "mp_rank_00" / "model_optim_rng.pt").read_bytes() == original.read_bytes()
