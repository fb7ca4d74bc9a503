"""Read a Megatron-mcore checkpoint (ours or MindSpeed-LLM's) rank file by rank file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import torch

from q7x2_runtime.convert.ckpt_args import dims_from_args
from q7x2_runtime.convert.layout import (
    Parallel,
    iteration_dir_name,
    plan_parallel,
    rank_file,
    read_latest_iteration,
    scan_ranks,
)
from q7x2_runtime.convert.mapping import MergeUnit, hf_shapes, join_pieces, merge_units, split_back
from q7x2_runtime.convert.torch_reader import LazyTensor, TorchFileReader
from q7x2_runtime.errors import UserError
from q7x2_runtime.model_dims import ModelDims

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def load_rank_file(path: Path) -> dict[str, Any]:
    """A rank file's content with LazyTensor values in 'model'.

    Not torch.load (see torch_reader), but the same trust model as torch.load with
    weights_only=False: the file holds Megatron's argparse.Namespace under 'args', which a
    weights-only unpickler (torch >= 2.6's default) refuses, so the pickle is run as is.
    These are checkpoints the user produced with this tool or Megatron; never point this at
    untrusted files.
    """
    if not path.exists():
        raise UserError(f"{path}: missing rank file")
    try:
        state = TorchFileReader(path).obj
    except Exception as e:
        raise UserError(f"{path}: cannot read checkpoint file ({e.__class__.__name__}: {str(e).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: not a Megatron model checkpoint (no 'model' state dict)")
    return state


class McoreCheckpoint:
    """A Megatron checkpoint directory: finds the iteration, the TP/PP grid and the model dims."""

    def __init__(self, load_dir: Path, iteration: int | None = None) -> None:
        load_dir = Path(load_dir)
        if re.fullmatch(r"iter_\d{7}|release", load_dir.name) and not (load_dir / "latest_checkpointed_iteration.txt").exists():
            self.iter_dir = load_dir
        else:
            if iteration is None:
                iteration = read_latest_iteration(load_dir)
                if iteration is None:
                    raise UserError(f"{load_dir}: no latest_checkpointed_iteration.txt; give --iteration or the iter_* directory")
            name = iteration_dir_name(iteration)
            if iteration == 0 and not (load_dir / name).exists():
                name = "release"
            self.iter_dir = load_dir / name
        self.tp, self.pp = scan_ranks(self.iter_dir)
        self._cache: dict[tuple[int, int], dict[str, Any]] = {}
        first = self.state(0, 0)
        self._cache.clear()
        if "args" not in first:
            raise UserError(f"{self._path(0, 0)}: checkpoint has no 'args'; cannot tell the model's shape")
        self.args = first["args"]
        self.iteration = first.get("iteration", iteration)
        for attr, have in (("tensor_model_parallel_size", self.tp), ("pipeline_model_parallel_size", self.pp)):
            stored = getattr(self.args, attr, have)
            if stored != have:
                raise UserError(f"{self.iter_dir}: args say {attr}={stored} but the directory holds {have}")
        self.dims: ModelDims = dims_from_args(self.args)
        self.par: Parallel = plan_parallel(self.dims, self.tp, self.pp, self._layers_per_stage())

    def _path(self, tp_rank: int, pp_rank: int) -> Path:
        return rank_file(self.iter_dir, tp_rank, pp_rank, self.pp)

    def state(self, tp_rank: int, pp_rank: int) -> dict[str, Any]:
        key = (tp_rank, pp_rank)
        if key not in self._cache:
            self._cache[key] = load_rank_file(self._path(tp_rank, pp_rank))
        return self._cache[key]

    def model(self, tp_rank: int, pp_rank: int) -> dict[str, LazyTensor]:
        return self.state(tp_rank, pp_rank)["model"]

    def _layers_per_stage(self) -> list[int]:
        # Counted from the files, so uneven (--num-layer-list) layouts need no extra input.
        counts = []
        for pp_rank in range(self.pp):
            layers = {int(m.group(1)) for k in self.model(0, pp_rank) if (m := _LAYER.match(k))}
            counts.append(len(layers))
            self._cache.clear()
        return counts

    def dtype(self) -> torch.dtype:
        for t in self.model(0, 0).values():
            if isinstance(t, LazyTensor) and t.dtype.is_floating_point:
                return t.dtype
        return torch.bfloat16

    def units(self, dtype: torch.dtype) -> Iterator[tuple[MergeUnit, dict[str, list[torch.Tensor]]]]:
        """Yield each merge unit with its HF tensors, each as contiguous parts in write order.

        Parts may be read-only views of the checkpoint files: copy before changing them.
        One unit (about one layer) is in memory at a time.
        """
        shapes = hf_shapes(self.dims)
        for unit in merge_units(self.dims, self.par):
            found: dict[str, list] = {name: [] for name in unit.hf_names}
            for tp_rank, pp_rank, spec in unit.sources:
                model = self.model(tp_rank, pp_rank)
                if spec.name not in model:
                    raise UserError(f"{self._path(tp_rank, pp_rank)}: lacks {spec.name}; checkpoint does not match its args")
                try:
                    for piece, rows in split_back(spec, model[spec.name].load()):
                        found[piece.hf_name].append((piece, rows))
                except ValueError as e:
                    raise UserError(f"{self._path(tp_rank, pp_rank)}: {e}") from None
            try:
                parts = {name: join_pieces(shapes[name], found[name], dtype) for name in unit.hf_names}
            except ValueError as e:
                raise UserError(f"{self.iter_dir}: {e}") from None
            del found
            yield unit, parts
