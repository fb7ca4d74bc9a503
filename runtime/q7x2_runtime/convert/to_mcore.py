"""HF tensors -> Megatron-mcore rank files (model_optim_rng.pt per TP/PP rank)."""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import Callable, Iterable

import torch

from q7x2_runtime.convert.ckpt_args import CHECKPOINT_VERSION
from q7x2_runtime.convert.layout import RANK_FILE, Parallel, iteration_dir_name, rank_dir_name
from q7x2_runtime.convert.mapping import PieceReader, assemble_parts, rank_tensors
from q7x2_runtime.convert.sink import Worker
from q7x2_runtime.convert.torch_zip import TensorSlot, TorchZipWriter
from q7x2_runtime.model_dims import ModelDims


def rank_tensor_bytes(dims: ModelDims, par: Parallel, tp_rank: int, pp_rank: int, dtype: torch.dtype) -> list[int]:
    """The bytes of each tensor of one rank's file, in its order."""
    size = torch.empty((), dtype=dtype).element_size()
    return [size * torch.Size(spec.shape).numel() for spec in rank_tensors(dims, par, tp_rank, pp_rank)]


def rank_bytes(dims: ModelDims, par: Parallel, tp_rank: int, pp_rank: int, dtype: torch.dtype) -> int:
    """An upper bound of one rank file's size (free-space check)."""
    tensors = rank_tensor_bytes(dims, par, tp_rank, pp_rank, dtype)
    # per tensor: zip local header, name, alignment padding, directory entry
    return sum(tensors) + 192 * len(tensors) + (1 << 16)


def write_stage(
    iter_dir: Path,
    dims: ModelDims,
    par: Parallel,
    pp_rank: int,
    tp_ranks: list[int],
    source: PieceReader,
    dtype: torch.dtype,
    args: argparse.Namespace,
    iteration: int,
    worker: Worker,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, tuple[str, int]]:
    """Write the files of one pipeline stage's TP ranks side by side.

    Tensors go out in state-dict order; for each one, every TP rank's part is cut from the
    same HF tensors, which are read once and then released. So each input byte is read once,
    each output byte written once, and memory holds about one layer.
    Returns {path relative to iter_dir: (sha256, bytes)}.
    """
    specs = {t: rank_tensors(dims, par, t, pp_rank) for t in tp_ranks}
    rels = {t: f"{rank_dir_name(t, pp_rank, par.pp)}/{RANK_FILE}" for t in tp_ranks}
    writers: dict[int, TorchZipWriter] = {}
    elsize = torch.empty((), dtype=dtype).element_size()
    slots: dict[int, collections.OrderedDict[str, TensorSlot]] = {}
    try:
        for t in tp_ranks:
            path = iter_dir / rels[t]
            path.parent.mkdir(parents=True, exist_ok=True)
            writers[t] = w = TorchZipWriter(path, worker)
            slots[t] = collections.OrderedDict((s.name, w.slot(s.shape, dtype)) for s in specs[t])
            obj = {
                "args": args,
                "checkpoint_version": CHECKPOINT_VERSION,
                "iteration": iteration,
                "model": slots[t],
                "num_floating_point_operations_so_far": 0,
            }
            w.begin(obj)
        for i in range(len(specs[tp_ranks[0]])):
            for t in tp_ranks:
                spec = specs[t][i]
                # crc32 and sha256 on this thread, os.write on the worker's.
                writers[t].write_tensor(slots[t][spec.name], assemble_parts(spec, source, dtype))
                if on_bytes is not None:
                    on_bytes(elsize * torch.Size(spec.shape).numel())
            source.release()
        for t in tp_ranks:
            writers[t].finish()
        worker.drain()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return {rels[t]: (writers[t].sha256, (iter_dir / rels[t]).stat().st_size) for t in tp_ranks}


def write_iteration(
    iter_dir: Path,
    dims: ModelDims,
    par: Parallel,
    source: PieceReader,
    dtype: torch.dtype,
    args: argparse.Namespace,
    iteration: int,
    ranks: Iterable[tuple[int, int]] | None = None,
    on_file: Callable[[str, str, int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, tuple[str, int]]:
    """Write mp_rank_*/model_optim_rng.pt under `iter_dir` for the given (tp, pp) ranks (all
    by default), stage by stage. Returns {path relative to iter_dir: (sha256, bytes)}."""
    chosen = set(ranks) if ranks is not None else {(t, p) for p in range(par.pp) for t in range(par.tp)}
    out: dict[str, tuple[str, int]] = {}
    worker = Worker()
    try:
        for pp_rank in range(par.pp):
            tp_ranks = [t for t in range(par.tp) if (t, pp_rank) in chosen]
            if not tp_ranks:
                continue
            written = write_stage(iter_dir, dims, par, pp_rank, tp_ranks, source, dtype, args, iteration, worker,
                                  on_bytes)
            out.update(written)
            if on_file is not None:
                for rel, (sha, size) in written.items():
                    on_file(rel, sha, size)
    finally:
        worker.close()
    return out


def _conversion_meta(
    load_dir: Path, tp: int, pp: int, layers_per_stage: list[int] | tuple[int, ...], dtype_name: str, ranks: list[tuple[int, int]]
) -> dict[str, object]:
    """What a finished conversion records in its manifest, and what --skip-existing compares."""
    return {
        "format": "megatron-mcore",
        "source": str(load_dir.resolve()),
        "tp": tp,
        "pp": pp,
        "layers_per_stage": list(layers_per_stage),
        "params_dtype": dtype_name,
        "ranks": [f"{t},{p}" for t, p in ranks],
        "complete": len(ranks) == tp * pp,
    }


def _selected_ranks(tp: int, pp: int, only_stages: list[int] | None, only_tp_ranks: list[int] | None) -> list[tuple[int, int]]:
    return [
        (t, p)
        for p in range(pp)
        if only_stages is None or p in only_stages
        for t in range(tp)
        if only_tp_ranks is None or t in only_tp_ranks
    ]


def existing_conversion_matches(
    load_dir: Path,
    save_dir: Path,
    tp: int,
    pp: int,
    num_layer_list: list[int] | None,
    dtype_name: str,
    only_stages: list[int] | None = None,
    only_tp_ranks: list[int] | None = None,
) -> bool | str:
    """True when save_dir holds a finished, intact conversion of load_dir with exactly these
    settings; a string (what differs) when it is such a conversion but a file no longer
    matches its manifest; False otherwise.

    Output directories appear only by an atomic rename after their manifest is written, so a
    manifest whose settings match means the conversion finished. What it trusts is then
    checked in full: every file's size and sha256 against the manifest (a size check alone
    misses a flipped or overwritten byte, a sampled hash misses most of them; a full hash costs
    one read of the output, two files at a time, much less than converting again, and a
    corrupt rank file would otherwise reach training). Any other existing directory is left for the caller to
    refuse or replace.
    """
    import json

    from q7x2_runtime.convert.hf_source import dims_of
    from q7x2_runtime.convert.layout import plan_parallel
    from q7x2_runtime.convert.output import MANIFEST, manifest_problem

    try:
        recorded = json.loads((save_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(recorded, dict):
        return False
    par = plan_parallel(dims_of(load_dir), tp, pp, num_layer_list)
    expected = _conversion_meta(load_dir, tp, pp, par.layers_per_stage, dtype_name, _selected_ranks(tp, pp, only_stages, only_tp_ranks))
    if not all(recorded.get(k) == v for k, v in expected.items()):
        return False
    return manifest_problem(save_dir) or True


def convert_hf_to_mcore(
    load_dir: Path,
    save_dir: Path,
    tp: int,
    pp: int,
    num_layer_list: list[int] | None = None,
    dtype_name: str = "bf16",
    force: bool = False,
    only_stages: list[int] | None = None,
    only_tp_ranks: list[int] | None = None,
    iteration: int = 1,
) -> Path:
    """The CLI's hf -> mg path: the whole output directory appears atomically under save_dir."""
    # Imported here so that reading or writing mcore files alone does not need safetensors.
    from q7x2_runtime.convert.ckpt_args import checkpoint_args, params_dtype
    from q7x2_runtime.convert.hf_source import HFCheckpoint, dims_of
    from q7x2_runtime.convert.layout import plan_parallel, write_tracker
    from q7x2_runtime.convert.output import AtomicDir, check_free_space
    from q7x2_runtime.errors import UserError
    from q7x2_runtime.progress import ByteProgress

    dtype = params_dtype(dtype_name)
    dims = dims_of(load_dir)
    par = plan_parallel(dims, tp, pp, num_layer_list)
    for name, chosen, limit in (("--only-stage", only_stages, pp), ("--only-ranks", only_tp_ranks, tp)):
        bad = [x for x in chosen or [] if not 0 <= x < limit]
        if bad:
            raise UserError(f"{name} {bad[0]} is out of range 0..{limit - 1}")
    ranks = _selected_ranks(tp, pp, only_stages, only_tp_ranks)
    needed = sum(rank_bytes(dims, par, t, p, dtype) for t, p in ranks)
    args = checkpoint_args(dims, par, dtype_name, {"tokenizer_name_or_path": str(load_dir.resolve())})
    with HFCheckpoint(load_dir, dims) as source:
        out = AtomicDir(save_dir, force, describe="output directory")
        with out:
            check_free_space(out.path, needed)
            out.meta = _conversion_meta(load_dir, tp, pp, par.layers_per_stage, dtype_name, ranks)
            iter_name = iteration_dir_name(iteration)
            payload = sum(sum(rank_tensor_bytes(dims, par, t, p, dtype)) for t, p in ranks)
            progress = ByteProgress("convert hf -> mcore", payload)
            try:
                write_iteration(
                    out.path / iter_name, dims, par, source, dtype, args, iteration, ranks,
                    on_file=lambda rel, sha, size: out.add(f"{iter_name}/{rel}", sha, size),
                    on_bytes=progress.advance,
                )
            finally:
                progress.close()
            write_tracker(out.path, iteration)
    return save_dir
