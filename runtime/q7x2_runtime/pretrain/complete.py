"""Which checkpoint iterations in a save directory are complete, the same rule for both engines.

A training run may only resume from an iteration whose every file is present and whole. Megatron
core_r0.8.0 writes a checkpoint in place (torch.save, no temporary name): model_optim_rng.pt for
every (tp, pp) rank directory, distrib_optim.pt beside it when the distributed optimizer is used,
and only then, after a barrier, the tracker. So a process killed mid-save leaves an iteration
directory with missing or truncated files. A torch.save file is a zip archive whose central
directory is written last, so "the archive opens" is a cheap and sufficient test of "written to
the end"; nothing here reads the tensors.

With per-node storage the tracker exists on the host of global rank 0 only, so completeness is
judged from the files, and the tracker is one more condition only where it exists.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from q7x2_runtime.convert.layout import RANK_FILE, TRACKER, iteration_dir_name, rank_dir_name, read_latest_iteration
from q7x2_runtime.jobspec import Job

DISTRIB_OPTIM_FILE = "distrib_optim.pt"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")
_RANK_DIR = re.compile(r"^mp_rank_\d{2}(?:_\d{3})?$")


@dataclass(frozen=True)
class Layout:
    """What one iteration of a job's checkpoint must hold."""

    tp: int
    pp: int
    distributed_optimizer: bool

    def files(self, iteration: int) -> list[PurePosixPath]:
        """Every file of the iteration, relative to the save directory."""
        it = PurePosixPath(iteration_dir_name(iteration))
        names = [RANK_FILE, DISTRIB_OPTIM_FILE] if self.distributed_optimizer else [RANK_FILE]
        return [it / rank_dir_name(t, p, self.pp) / n for p in range(self.pp) for t in range(self.tp) for n in names]

    def rank_dirs(self) -> set[str]:
        return {rank_dir_name(t, p, self.pp) for t in range(self.tp) for p in range(self.pp)}

    @classmethod
    def of(cls, job: Job) -> "Layout":
        """The layout a job's training writes (optimizer files only when it keeps them)."""
        c = job.checkpoint
        return cls(job.parallelism.tp, job.parallelism.pp, c.distributed_optimizer and c.keep_optimizer)


def is_whole_torch_file(path: Path) -> bool:
    """True when path is a torch.save archive written to the end (its zip directory reads)."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def iterations_present(save_dir: Path) -> list[int]:
    """Iteration numbers of the iter_NNNNNNN directories in save_dir, ascending."""
    try:
        entries = list(Path(save_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [int(m.group(1)) for e in entries if (m := _ITER_DIR.match(e.name)) and e.is_dir()]
    return sorted(found)


def missing_files(save_dir: Path, layout: Layout, iteration: int) -> list[PurePosixPath]:
    """The files of an iteration that are absent or not written to the end (empty: complete)."""
    return [rel for rel in layout.files(iteration) if not is_whole_torch_file(Path(save_dir) / rel)]


def foreign_rank_dirs(save_dir: Path, layout: Layout, iteration: int) -> list[str]:
    """Rank directories of an iteration that the job's tp/pp would not write: another layout."""
    it = Path(save_dir) / iteration_dir_name(iteration)
    try:
        names = {e.name for e in it.iterdir() if _RANK_DIR.match(e.name)}
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names - layout.rank_dirs())


def complete_iterations(save_dir: Path, layout: Layout) -> list[int]:
    """Iterations whose every file is whole, ascending; with a tracker, none newer than it."""
    save_dir = Path(save_dir)
    tracked = read_latest_iteration(save_dir) if (save_dir / TRACKER).is_file() else None
    out = []
    for n in iterations_present(save_dir):
        if n == 0 or (tracked is not None and n > tracked):
            continue
        if not missing_files(save_dir, layout, n) and not foreign_rank_dirs(save_dir, layout, n):
            out.append(n)
    return out


def latest_complete(save_dir: Path, layout: Layout) -> int | None:
    done = complete_iterations(save_dir, layout)
    return done[-1] if done else None
