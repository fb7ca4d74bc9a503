"""Read a Megatron-mcore checkpoint (ours or MindSpeed-LLM's) rank file by rank file."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import zipfile
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
from q7x2_runtime.convert.output import MANIFEST
from q7x2_runtime.convert.mapping import MergeUnit, hf_shapes, join_pieces, merge_units, split_back
from q7x2_runtime.convert.torch_reader import LazyTensor, TorchFileReader
from q7x2_runtime.errors import UserError
from q7x2_runtime.os_errors import present, reason, regular_file
from q7x2_runtime.model_dims import ModelDims

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


class Checksums:
    """The sha256 manifest this tool wrote next to a checkpoint, checked on a background thread.

    The CLI writes q7x2-checksums.json at the top of its output (paths like
    iter_0000001/mp_rank_00/model_optim_rng.pt); the Python API writes one inside each
    iteration directory. Files the manifest lists are hashed while the conversion runs (the
    bytes are in the page cache by then, so this costs CPU, not a second read from disk) and
    a mismatch fails the conversion before its output is renamed into place. Checkpoints
    written by other tools (MindSpeed-LLM, Megatron) have no manifest and are not checked.
    """

    def __init__(self, iter_dir: Path) -> None:
        self.expected: dict[Path, tuple[str, int, Path]] = {}  # file -> (sha256, bytes, manifest)
        for root, prefix in ((iter_dir, ""), (iter_dir.parent, iter_dir.name + "/")):
            manifest = root / MANIFEST
            if not present(manifest, "checksum manifest"):
                continue
            regular_file(manifest, "checksum manifest", 64 << 20)
            try:
                files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
                for rel, entry in files.items():
                    if rel.startswith(prefix) and rel.endswith(".pt"):
                        self.expected[iter_dir / rel[len(prefix):]] = (str(entry["sha256"]), int(entry["bytes"]), manifest)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
                raise UserError(f"{manifest}: not a valid checksum manifest ({e.__class__.__name__}); restore it or delete it to skip the check") from None
            break
        self._problems: dict[Path, str] = {}
        self._thread: threading.Thread | None = None

    def problem(self, path: Path) -> str | None:
        """Why `path` differs from the manifest (hashing it now), or None."""
        if path not in self.expected:
            return None
        if path not in self._problems:
            sha, size, manifest = self.expected[path]
            try:
                got = path.stat().st_size
                if got != size:
                    self._problems[path] = f"is {got:,} bytes but {manifest} recorded {size:,} when it was written"
                else:
                    h = hashlib.sha256()
                    with open(path, "rb") as f:
                        while chunk := f.read(8 << 20):
                            h.update(chunk)
                    ok = h.hexdigest() == sha
                    self._problems[path] = "" if ok else f"its sha256 differs from the one {manifest} recorded when it was written"
            except OSError as e:
                self._problems[path] = f"cannot read: {reason(path, e)}"
        return self._problems[path] or None

    def start(self, paths: list[Path]) -> None:
        todo = [p for p in paths if p in self.expected]
        if todo:
            self._thread = threading.Thread(target=lambda: [self.problem(p) for p in todo], name="ckpt-verify", daemon=True)
            self._thread.start()

    def check(self, paths: list[Path]) -> None:
        """Raise for the first listed file that differs from the manifest."""
        if self._thread is not None:
            self._thread.join()
        for p in paths:
            problem = self.problem(p)
            if problem:
                raise UserError(f"{p}: {problem}; the file is corrupt or was changed: restore it or convert again")


def load_rank_file(path: Path, checksums: Checksums | None = None) -> dict[str, Any]:
    """A rank file's content with LazyTensor values in 'model'.

    Not torch.load (see torch_reader), but the same trust model as torch.load with
    weights_only=False: the file holds Megatron's argparse.Namespace under 'args', which a
    weights-only unpickler (torch >= 2.6's default) refuses, so the pickle is run as is.
    These are checkpoints the user produced with this tool or Megatron; never point this at
    untrusted files.
    """
    if not present(path, "rank file"):
        raise UserError(f"{path}: missing rank file")
    regular_file(path, "rank file")
    try:
        state = TorchFileReader(path).obj
    except OSError as e:
        raise UserError(f"cannot read rank file {path}: {reason(path, e)}") from None
    except Exception as e:
        problem = checksums.problem(path) if checksums is not None else None
        if problem:  # the manifest explains it better than the parser
            raise UserError(f"{path}: {problem}; the file is corrupt or was changed: restore it or convert again") from None
        what = "truncated or not a torch.save file" if isinstance(e, zipfile.BadZipFile) else "cannot parse it"
        raise UserError(f"{path}: {what} ({e.__class__.__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
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
        self.checksums = Checksums(self.iter_dir)
        self.checksums.start(self.rank_paths())
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

    def rank_paths(self) -> list[Path]:
        return [self._path(t, p) for p in range(self.pp) for t in range(self.tp)]

    def state(self, tp_rank: int, pp_rank: int) -> dict[str, Any]:
        key = (tp_rank, pp_rank)
        if key not in self._cache:
            self._cache[key] = load_rank_file(self._path(tp_rank, pp_rank), self.checksums)
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
        # Every tensor has been handed out; none of it may be used if a file was corrupt.
        self.checksums.check(self.rank_paths())
