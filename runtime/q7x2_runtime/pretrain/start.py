"""Where a training run starts from: one rule for both engines, decided from the files.

Each node surveys its own save_dir (on shared storage every node sees the same one): which
iterations are complete by the one completeness rule (pretrain/complete.py), and whether the
directory holds a checkpoint that is not this job's (another tp/pp, or another model shape),
which is refused rather than loaded. The launchers then agree (pretrain/agree.py) and every node
takes the same decision from the same surveys:
- no complete checkpoint on any node: a first start from the converted weights;
- otherwise the newest iteration complete on every node: a resume from save_dir with optimizer
  and RNG state. A half-written iteration is never resumed; the one before it is.
A node that holds no iteration the others hold, or that reports a refusal, ends the launch
with one line naming it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from q7x2_runtime.convert.layout import TRACKER, iteration_dir_name, rank_dir_name, read_latest_iteration, write_tracker
from q7x2_runtime.errors import UserError
from q7x2_runtime.jobspec import Job
from q7x2_runtime.pretrain.complete import Layout, complete_iterations, foreign_rank_dirs, iterations_present, missing_files
from q7x2_runtime.steps import StartKind

# What Megatron compares (check_checkpoint_args and the strict state-dict load), as stored args.
_SHAPE_ARGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
               "untie_embeddings_and_output_weights")  # fmt: skip


@dataclass(frozen=True)
class NodeSurvey:
    """What one node finds in its save_dir."""

    node_rank: int
    complete: list[int]
    tracker: int | None
    newest_present: int | None = None  # the newest iter_ directory, complete or not
    refusal: str | None = None  # why this save_dir must not be loaded, if it must not

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NodeSurvey":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class StartPoint:
    kind: StartKind
    iteration: int  # the iteration resumed (0 for a first start)
    load_dir: str
    notes: list[str] = field(default_factory=list)  # what a log reader should know about the choice

    def describe(self) -> str:
        if self.kind == "first":
            return f"first start from the converted weights {self.load_dir} (no complete checkpoint in the job's save_dir)"
        return f"resume from {self.load_dir} at iteration {self.iteration} (optimizer and RNG state as saved)"


def _shape_refusal(job: Job, save_dir: Path, layout: Layout, iteration: int) -> str | None:
    """One rank file's stored args against the job's model, read without loading tensors."""
    from q7x2_runtime.convert.mcore_source import load_rank_file

    path = save_dir / iteration_dir_name(iteration) / rank_dir_name(0, 0, layout.pp) / "model_optim_rng.pt"
    try:
        args = load_rank_file(path).get("args")
    except UserError as e:
        return str(e)
    if args is None:
        return None
    d = job.model.d
    expected = {
        "num_layers": d.num_layers, "hidden_size": d.hidden_size, "ffn_hidden_size": d.ffn_hidden_size,
        "num_attention_heads": d.num_attention_heads, "num_query_groups": d.num_query_groups,
        "untie_embeddings_and_output_weights": d.untie_embeddings,
    }  # fmt: skip
    found = {k: getattr(args, k, None) for k in _SHAPE_ARGS}
    if not getattr(args, "group_query_attention", False):
        found["num_query_groups"] = found["num_attention_heads"]
    diffs = [f"{k} {found[k]} (job: {expected[k]})" for k in _SHAPE_ARGS if found[k] is not None and found[k] != expected[k]]
    if diffs:
        return (
            f"{save_dir} holds iteration {iteration} of another model ({', '.join(diffs)}); "
            "give the job its own save_dir or move those checkpoints away"
        )
    return None


def survey(job: Job, node_rank: int) -> NodeSurvey:
    """This node's view of the job's save_dir."""
    save_dir = Path(job.paths.save_dir)
    layout = Layout.of(job)
    present = iterations_present(save_dir)
    try:
        tracker = read_latest_iteration(save_dir) if (save_dir / TRACKER).is_file() else None
    except UserError as e:
        return NodeSurvey(node_rank, [], None, present[-1] if present else None, str(e))
    newest = present[-1] if present else None
    p = job.parallelism
    for n in present:
        foreign = foreign_rank_dirs(save_dir, layout, n)
        if foreign:
            return NodeSurvey(node_rank, [], tracker, newest, (
                f"{save_dir} holds iteration {n} written with another tensor/pipeline layout ({', '.join(foreign[:3])}) "
                f"than the job's tp {p.tp} pp {p.pp}; give the job its own save_dir or move those checkpoints away"
            ))  # fmt: skip
    complete = complete_iterations(save_dir, layout)
    refusal = _shape_refusal(job, save_dir, layout, complete[-1]) if complete else None
    return NodeSurvey(node_rank, complete, tracker, newest, refusal)


def decide(job: Job, surveys: list[NodeSurvey]) -> StartPoint:
    """The start point every node takes, from every node's survey (the same answer on each)."""
    surveys = sorted(surveys, key=lambda s: s.node_rank)
    for s in surveys:
        if s.refusal:
            raise UserError(f"node {s.node_rank}: {s.refusal}")
    if not any(s.complete for s in surveys):
        notes = []
        half = [s for s in surveys if s.newest_present is not None]
        if half:
            s = half[0]
            notes.append(f"node {s.node_rank}: iteration {s.newest_present} in {job.paths.save_dir} is incomplete and is not resumed")
        return StartPoint("first", 0, job.paths.mcore_weights, notes)
    common = set(surveys[0].complete).intersection(*(s.complete for s in surveys[1:]))
    if not common:
        have = "; ".join(f"node {s.node_rank}: {_iterations(s.complete)}" for s in surveys)
        raise UserError(
            f"the nodes hold no common complete checkpoint in {job.paths.save_dir} ({have}); "
            "every node needs the iteration it resumes from (storage per-node: restore the missing copy)"
        )
    chosen = max(common)
    notes = []
    for s in surveys:
        if s.complete and s.complete[-1] > chosen:
            notes.append(f"node {s.node_rank} also holds iteration {s.complete[-1]}, which another node lacks")
        if s.newest_present is not None and s.newest_present > max(s.complete, default=0):
            notes.append(f"node {s.node_rank}: iteration {s.newest_present} is incomplete and is not resumed")
    return StartPoint("resume", chosen, job.paths.save_dir, notes)


def _iterations(done: list[int]) -> str:
    return "none" if not done else ", ".join(str(n) for n in done[-3:])


def point_tracker_at(job: Job, start: StartPoint) -> bool:
    """Make this node's tracker name the iteration decided (Megatron's --load reads the tracker,
    not our decision). Returns True when it had to change it. Only on a resume, and only once the
    iteration is known complete here."""
    if start.kind != "resume":
        return False
    save_dir = Path(job.paths.save_dir)
    if missing_files(save_dir, Layout.of(job), start.iteration):
        raise UserError(f"iteration {start.iteration} is not complete in {save_dir} on this node")
    if (save_dir / TRACKER).is_file() and read_latest_iteration(save_dir) == start.iteration:
        return False
    write_tracker(save_dir, start.iteration)
    return True
