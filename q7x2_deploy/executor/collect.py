"""`collect`: one checkpoint iteration gathered from every host into one local directory.

With per-node storage each host holds the files its own ranks wrote (and, with a replica path,
the store holds every node's copy; without one, each host's own store holds its node's copies
and the previous host's). Each host lists what it has - its save_dir and the store's
finished copies (manifest present) - and every file of the iteration (complete.Layout) is
fetched from the first source that has it whole: the hosts' save_dirs first, then the store.
Files arrive under temporary names; the result is judged by the runtime's one completeness rule
and gets its tracker only once complete, so a partial collection never looks like a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from q7x2_deploy.errors import DeployError, reason_for
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.replica_status import listing_argv, parse_listing
from q7x2_deploy.plan import HostPlan
from q7x2_runtime.convert.layout import write_tracker
from q7x2_runtime.pretrain.complete import Layout, complete_iterations, is_whole_torch_file, missing_files
from q7x2_runtime.pretrain.replica import node_dir, replica_root

_LIST_SCRIPT = 'cd -- "$1" 2>/dev/null || exit 0; for f in iter_*/mp_rank_*/*.pt; do [ -f "$f" ] && echo "$f"; done; true'

Log = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    host: str
    path: str  # absolute path on the host
    what: str  # "save_dir" or "replica node-K"


def _host_sources(cluster: Cluster, host: HostPlan) -> dict[str, list[Source]]:
    """rel path -> where this host holds it."""
    spec = cluster.plan.job_spec
    t = cluster.transport(host)
    save_dir = spec.job.paths.save_dir
    out: dict[str, list[Source]] = {}
    r = t.check(["sh", "-c", _LIST_SCRIPT, "sh", save_dir], timeout=120)
    for rel in r.stdout.split():
        out.setdefault(rel, []).append(Source(host.name, f"{save_dir}/{rel}", "save_dir"))
    argv = listing_argv(spec)
    root = replica_root(spec)
    if argv is not None and root is not None:
        for m in parse_listing(t.run(argv, timeout=120).stdout):
            base = node_dir(root, m.node_rank)
            for rel in m.files:
                out.setdefault(rel, []).append(Source(host.name, f"{base}/{rel}", f"replica node-{m.node_rank}"))
    return out


def gather_sources(cluster: Cluster, log: Log) -> dict[str, list[Source]]:
    """Every reachable host's files; an unreachable host is reported, not fatal (the store may
    hold its share)."""
    outcomes = for_each(cluster.hosts, lambda h: _host_sources(cluster, h), key=lambda h: h.name)
    merged: dict[str, list[Source]] = {}
    for h in cluster.hosts:
        o = outcomes[h.name]
        if o.value is None:
            log(f"{h.name}: not reachable, collecting without it ({reason_for(o.error, h.name)})")
            continue
        for rel, srcs in o.value.items():
            merged.setdefault(rel, []).extend(srcs)
    # The copy a host's own ranks wrote first, then other hosts' save_dirs, then the store.
    for srcs in merged.values():
        srcs.sort(key=lambda s: s.what != "save_dir")
    return merged


def choose_iteration(layout: Layout, available: dict[str, list[Source]], wanted: int | None) -> int:
    present = sorted({int(rel.split("/")[0].removeprefix("iter_")) for rel in available})
    whole = [n for n in present if n > 0 and all(str(f) in available for f in layout.files(n))]
    if wanted is not None:
        if wanted not in whole:
            lacking = [str(f) for f in layout.files(wanted) if str(f) not in available]
            raise DeployError(f"iteration {wanted} cannot be collected: no host or replica holds {lacking[0]}"
                              + (f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else "")
                              + f"; iterations available whole: {', '.join(map(str, whole)) or 'none'}")
        return wanted
    if not whole:
        raise DeployError("no checkpoint iteration is held whole by the hosts and the replica together"
                          + (f" (partial: {', '.join(map(str, present[-3:]))})" if present else ""))
    return whole[-1]


def _fetch(cluster: Cluster, src: Source, dest: Path) -> bool:
    """Stream one file off a host into dest (atomically); False when the copy is not whole."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.collect-{os.getpid()}")
    proc = cluster.transport(src.host).start(["cat", "--", src.path], merge_stderr=False)
    try:
        with open(tmp, "wb") as f:
            for chunk in proc.chunks():
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        status = proc.wait(timeout=60)
    finally:
        proc.close()
    if status != 0 or not is_whole_torch_file(tmp):
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, dest)
    return True


def collect(cluster: Cluster, dest: Path, iteration: int | None, log: Log) -> int:
    """Gather the iteration into dest (tracker written last); returns the iteration."""
    spec = cluster.plan.job_spec
    layout = Layout.of(spec.job)
    available = gather_sources(cluster, log)
    n = choose_iteration(layout, available, iteration)
    total = 0
    for rel in layout.files(n):
        target = dest / Path(PurePosixPath(rel))
        for src in available[str(rel)]:
            if _fetch(cluster, src, target):
                total += target.stat().st_size
                log(f"{rel}: from {src.host} ({src.what})")
                break
            log(f"{rel}: the copy on {src.host} ({src.what}) is not whole; trying the next one")
        else:
            raise DeployError(f"{rel}: no whole copy on any host or in the replica; {dest} is incomplete")
    missing = missing_files(dest, layout, n)
    if missing:
        raise DeployError(f"{dest}: iteration {n} is incomplete after collecting: {missing[0]} missing")
    write_tracker(dest, n)
    if n not in complete_iterations(dest, layout):
        raise DeployError(f"{dest}: iteration {n} does not pass the completeness check (another layout in {dest}?)")
    log(f"collected iteration {n} into {dest}: {len(layout.files(n))} files, {total / 2**20:.1f} MiB")
    return n
