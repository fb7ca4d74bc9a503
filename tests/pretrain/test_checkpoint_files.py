"""The CPU trainer's checkpoint files: Megatron's layout, written by the ranks Megatron would use,
judged complete by the one rule, and never looking complete when a save is cut short."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from q7x2_runtime.convert.api import load_mcore_as_hf_state_dict, read_latest_iteration
from q7x2_runtime.convert.layout import plan_parallel
from q7x2_runtime.model_dims import ModelDims
from q7x2_runtime.pretrain import checkpoint
from q7x2_runtime.pretrain.checkpoint import RankGrid, SaveRequest, optimizer_shards, read_optimizer, save_iteration
from q7x2_runtime.pretrain.complete import Layout, complete_iterations
from q7x2_runtime.pretrain.trainer import build_model

DIMS = ModelDims(num_layers=4, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=64, max_position_embeddings=32, rotary_base=10000.0, norm_epsilon=1e-6)  # fmt: skip
PAR = plan_parallel(DIMS, 2, 2, [1, 3])
GRID = RankGrid(2, 2, 4)  # 4 ranks, data-parallel size 1


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach() for k, v in build_model(DIMS, 16).state_dict().items()}


def _request(save_dir: Path, iteration: int, state: dict, *, optimizer: bool = True) -> SaveRequest:
    optim = {n: {"main_param": t.clone(), "exp_avg": t * 0.1, "exp_avg_sq": t * t} for n, t in state.items()}
    return SaveRequest(save_dir=save_dir, iteration=iteration, dims=DIMS, par=PAR, params_dtype="fp32", hf_state=state,
                       optimizer=optim if optimizer else None, scheduler={"max_lr": 1.0} if optimizer else None,
                       rng=checkpoint.rng_state(), distributed_optimizer=True,
                       extra_args={"seq_length": 16}, flops_so_far=1.0)  # fmt: skip


def _save_as_four_ranks(req: SaveRequest, fail_rank: int | None = None) -> list[BaseException]:
    barrier = threading.Barrier(4, timeout=30)
    errors: list[BaseException] = []

    def dies_after_writing() -> None:
        calls.append(1)
        if len(calls) == 2:  # its files are written; the process dies before the others hear of it
            raise OSError("killed")
        barrier.wait()

    calls: list[int] = []

    def rank(r: int) -> None:
        try:
            wait = dies_after_writing if r == fail_rank else barrier.wait
            save_iteration(req, rank=r, local_rank=r, grid=GRID, per_node=False, barrier=wait)
        except BaseException as e:  # noqa: BLE001 - collected for the test
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_megatron_layout_loads_back_and_is_complete(tmp_path: Path, state: dict) -> None:
    save = tmp_path / "ckpt"
    assert _save_as_four_ranks(_request(save, 10, state)) == []
    assert read_latest_iteration(save) == 10
    assert complete_iterations(save, Layout(2, 2, True)) == [10]
    assert not [p for p in save.iterdir() if p.name.startswith(".")]
    dims, back = load_mcore_as_hf_state_dict(save)
    assert all(torch.equal(back[k], state[k]) for k in state)
    rank_file = torch.load(save / "iter_0000010" / "mp_rank_01_001" / "model_optim_rng.pt", weights_only=False)
    assert rank_file["checkpoint_version"] == 3.0 and rank_file["args"].seq_length == 16
    assert "rng_state" in rank_file and "optimizer" not in rank_file
    merged = read_optimizer(save, 10, PAR, distributed_optimizer=True)
    assert merged.keys() == state.keys() and all(torch.equal(merged[k]["exp_avg"], state[k] * 0.1) for k in state)


def test_each_parameter_has_its_optimizer_state_in_one_rank_directory(state: dict) -> None:
    shards = optimizer_shards(list(state), PAR)
    flat = [n for names in shards.values() for n in names]
    assert sorted(flat) == sorted(state) and all(shards.values())
    assert "model.embed_tokens.weight" in shards[(0, 0)] + shards[(1, 0)]
    assert "model.layers.3.mlp.down_proj.weight" in shards[(0, 1)] + shards[(1, 1)]


def test_a_cut_short_save_leaves_the_previous_iteration_the_newest_complete(tmp_path: Path, state: dict) -> None:
    save = tmp_path / "ckpt"
    assert _save_as_four_ranks(_request(save, 10, state)) == []
    errors = _save_as_four_ranks(_request(save, 20, state), fail_rank=3)
    assert errors
    assert not (save / "iter_0000020").exists() and read_latest_iteration(save) == 10
    assert (save / ".iter_0000020.partial").is_dir()  # what was written stays hidden
    assert complete_iterations(save, Layout(2, 2, True)) == [10]
    # The next save of the same iteration clears the leftovers and completes.
    assert _save_as_four_ranks(_request(save, 20, state)) == []
    assert complete_iterations(save, Layout(2, 2, True)) == [10, 20]


def test_without_optimizer_state_there_is_no_distrib_optim(tmp_path: Path, state: dict) -> None:
    save = tmp_path / "ckpt"
    assert _save_as_four_ranks(_request(save, 10, state, optimizer=False)) == []
    assert complete_iterations(save, Layout(2, 2, False)) == [10]
    assert complete_iterations(save, Layout(2, 2, True)) == []
    from q7x2_runtime.errors import UserError

    with pytest.raises(UserError, match="no distributed-optimizer state .* give --no-load-optim or --finetune"):
        read_optimizer(save, 10, PAR, distributed_optimizer=True)
