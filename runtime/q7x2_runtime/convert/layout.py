"""Where Megatron keeps a checkpoint's files, and which layers each pipeline stage owns.

Megatron core_r0.8.0 (checkpointing.py): <dir>/iter_{N:07d}/mp_rank_{tp:02d}[_{pp:03d}]/model_optim_rng.pt,
with the PP suffix only when PP > 1, and <dir>/latest_checkpointed_iteration.txt naming N
(or the word "release" for a release/ directory).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from q7x2_runtime.errors import UserError
from q7x2_runtime.model_dims import ModelDims

TRACKER = "latest_checkpointed_iteration.txt"
RANK_FILE = "model_optim_rng.pt"
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")


def iteration_dir_name(iteration: int | str) -> str:
    return "release" if iteration == "release" else f"iter_{int(iteration):07d}"


def rank_dir_name(tp_rank: int, pp_rank: int, pp: int) -> str:
    return f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


def rank_file(iter_dir: Path, tp_rank: int, pp_rank: int, pp: int) -> Path:
    return iter_dir / rank_dir_name(tp_rank, pp_rank, pp) / RANK_FILE


def read_latest_iteration(save_dir: Path) -> int | None:
    """The iteration named by the tracker file, or None when there is no checkpoint yet.

    A "release" tracker (Megatron's convention for converted weights without an iteration)
    is reported as 0, which is what Megatron itself resumes from in that case.
    """
    path = Path(save_dir) / TRACKER
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if text == "release":
        return 0
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{path}: expected an iteration number or 'release', found {text[:40]!r}") from None


def write_tracker(save_dir: Path, iteration: int) -> None:
    """Replace the tracker file atomically so a reader never sees it half written."""
    path = Path(save_dir) / TRACKER
    tmp = path.with_name(f".{TRACKER}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{iteration}")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def scan_ranks(iter_dir: Path) -> tuple[int, int]:
    """(tp, pp) implied by the mp_rank_* directories present, checking the grid is complete."""
    found: set[tuple[int, int]] = set()
    with_pp = False
    if not iter_dir.is_dir():
        raise UserError(f"{iter_dir}: no such checkpoint directory")
    for entry in iter_dir.iterdir():
        m = _RANK_DIR.match(entry.name)
        if not m:
            continue
        if m.group(2) is not None:
            with_pp = True
        found.add((int(m.group(1)), int(m.group(2) or 0)))
    if not found:
        raise UserError(f"{iter_dir}: no mp_rank_* directories; not a Megatron checkpoint")
    tp = max(t for t, _ in found) + 1
    pp = max(p for _, p in found) + 1
    missing = [(t, p) for t in range(tp) for p in range(pp) if (t, p) not in found]
    if missing:
        names = ", ".join(rank_dir_name(t, p, 2 if with_pp else 1) for t, p in missing[:4])
        raise UserError(f"{iter_dir}: incomplete checkpoint, missing {names}")
    return tp, pp


@dataclass(frozen=True)
class Parallel:
    """A validated TP/PP layout for one model."""

    tp: int
    pp: int
    layers_per_stage: tuple[int, ...]

    def stage_layers(self, pp_rank: int) -> range:
        """Global layer numbers held by a stage; inside the stage they are numbered from 0."""
        start = sum(self.layers_per_stage[:pp_rank])
        return range(start, start + self.layers_per_stage[pp_rank])

    def is_first(self, pp_rank: int) -> bool:
        return pp_rank == 0

    def is_last(self, pp_rank: int) -> bool:
        return pp_rank == self.pp - 1


def plan_parallel(dims: ModelDims, tp: int, pp: int, num_layer_list: list[int] | None = None) -> Parallel:
    """Check TP/PP against the model the way Megatron would refuse it, but before any work."""
    if tp < 1 or pp < 1:
        raise UserError(f"tensor and pipeline parallel sizes must be >= 1 (got tp={tp}, pp={pp})")
    if dims.num_query_groups % tp:
        raise UserError(
            f"tp={tp} does not divide the model's {dims.num_query_groups} key/value groups "
            "(each TP rank must hold whole query groups); choose a tp that divides it"
        )
    if dims.num_attention_heads % tp:
        raise UserError(f"tp={tp} does not divide the {dims.num_attention_heads} attention heads")
    if dims.ffn_hidden_size % tp:
        raise UserError(f"tp={tp} does not divide the MLP width {dims.ffn_hidden_size}")
    if num_layer_list:
        if len(num_layer_list) != pp:
            raise UserError(f"--num-layer-list has {len(num_layer_list)} entries but pp={pp}; give one per stage")
        if any(n < 1 for n in num_layer_list):
            raise UserError("every --num-layer-list entry must be >= 1")
        if sum(num_layer_list) != dims.num_layers:
            raise UserError(
                f"--num-layer-list sums to {sum(num_layer_list)} but the model has {dims.num_layers} layers"
            )
        per_stage = tuple(num_layer_list)
    else:
        if dims.num_layers % pp:
            raise UserError(
                f"pp={pp} does not divide the model's {dims.num_layers} layers; give --num-layer-list"
            )
        per_stage = (dims.num_layers // pp,) * pp
    return Parallel(tp=tp, pp=pp, layers_per_stage=per_stage)
