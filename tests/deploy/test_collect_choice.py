"""collect picks the newest iteration the hosts and the replica hold whole together, and refuses an
iteration nobody holds whole with one line naming a missing file."""

from __future__ import annotations

import pytest

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.collect import Source, choose_iteration
from q7x2_runtime.pretrain.complete import Layout

LAYOUT = Layout(tp=2, pp=1, distributed_optimizer=False)


def _avail(*held: tuple[str, int, int]) -> dict[str, list[Source]]:
    out: dict[str, list[Source]] = {}
    for host, n, t in held:
        rel = f"iter_{n:07d}/mp_rank_0{t}/model_optim_rng.pt"
        out.setdefault(rel, []).append(Source(host, f"/ckpt/{rel}", "save_dir"))
    return out


def test_newest_whole_across_hosts() -> None:
    # Each host holds its own half; iteration 20 lacks host b's half (b was lost mid-save).
    avail = _avail(("a", 10, 0), ("b", 10, 1), ("a", 20, 0))
    assert choose_iteration(LAYOUT, avail, None) == 10
    assert choose_iteration(LAYOUT, avail, 10) == 10
    with pytest.raises(DeployError, match=r"iteration 20 cannot be collected: no host or replica holds iter_0000020/mp_rank_01"):
        choose_iteration(LAYOUT, avail, 20)


def test_nothing_whole() -> None:
    with pytest.raises(DeployError, match="no checkpoint iteration is held whole"):
        choose_iteration(LAYOUT, _avail(("a", 20, 0)), None)
