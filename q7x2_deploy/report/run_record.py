"""A run directory (.q7x2/runs/<job>/ or one of its earlier/<time>/ attempts) read back as data.

Everything `report` shows comes from files `up` already writes: plan.json (the job and hosts),
one log per host, deployer.tsv (the deployer's own lines with their times: phases, starts,
finishes, failures), events.jsonl (recoveries) and result.json. A running job is read as far as
it got; nothing here talks to a host.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from q7x2_deploy.runs.rundir import DEPLOYER_LOG, EARLIER, EVENTS_FILE, RESULT_FILE, _order
from q7x2_runtime.errors import UserError
from q7x2_runtime.pretrain.log_parse import IterationRecord, parse_line

_STARTED = re.compile(r"^q7x2-deploy: (?P<host>\S+): (?P<step>\w+) started\b")
_FINISHED = re.compile(r"^q7x2-deploy: (?P<host>\S+): (?P<step>\w+) (?:finished|already done)")
_FAILED = re.compile(r"^q7x2-deploy: (?P<host>\S+) \(rank (?P<rank>\d+)\) failed in (?P<step>\w+): (?P<reason>.*)$")
_PHASE = re.compile(r"^q7x2-deploy: phase (?P<phase>\w+)$")
_STOPPED = re.compile(r"^q7x2-deploy: job \S+ (?:stopped on|finished on every host)")
_SAVED = re.compile(r"saved checkpoint (?:from|at) iteration\s+(\d+)")


@dataclass(frozen=True)
class Span:
    """One step's container on one host, from start to its end (None: still running or unknown)."""

    host: str
    step: str
    start: float
    end: float | None = None
    failed: bool = False


@dataclass(frozen=True)
class Marker:
    time: float
    host: str
    kind: str  # failure | recovery
    text: str


@dataclass
class RunRecord:
    directory: Path
    job: str
    plan: dict
    host_logs: dict[str, list[str]]
    iterations: list[IterationRecord]
    checkpoints: list[int]
    spans: list[Span]
    markers: list[Marker]
    events: list[dict]
    result: dict
    first_time: float | None = None
    last_time: float | None = None
    notes: list[tuple[float, str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.result.get("status"):
            return str(self.result["status"])
        if any(m.kind == "failure" for m in self.markers) and not self.spans_open():
            return "failed"
        return "running" if self.spans_open() else "unknown"

    def spans_open(self) -> bool:
        return any(s.end is None for s in self.spans)

    @property
    def restarts(self) -> int:
        return sum(1 for e in self.events if e.get("action") not in (None, "gave up", "give up"))

    @property
    def seq_length(self) -> int:
        return int(self.plan.get("job_spec", {}).get("job", {}).get("training", {}).get("seq_length", 0))


def attempts(run_dir: Path) -> list[Path]:
    """The run's attempts, oldest first; the run directory itself is the newest."""
    earlier = run_dir / EARLIER
    older = sorted((p for p in earlier.iterdir() if p.is_dir()), key=_order) if earlier.is_dir() else []
    return [*older, run_dir]


def pick_attempt(run_dir: Path, attempt: int | None) -> Path:
    """`--attempt N`: 1 is the oldest kept, -1 (default) the newest, -2 the one before it."""
    all_ = attempts(run_dir)
    if attempt is None:
        return all_[-1]
    index = attempt - 1 if attempt > 0 else attempt
    if attempt == 0 or not -len(all_) <= index < len(all_):
        raise UserError(f"{run_dir}: attempt {attempt} does not exist; this run has {len(all_)} attempt(s) "
                        f"(1 = oldest kept, -1 = newest)")
    return all_[index]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable as JSON ({e}); was the run directory edited?") from None
    return data if isinstance(data, dict) else {}


def _read_notes(path: Path) -> list[tuple[float, str]]:
    out = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        stamp, sep, note = line.partition("\t")
        try:
            out.append((float(stamp), note)) if sep else None
        except ValueError:
            continue  # a line cut short by a crash
    return out


def _read_events(path: Path) -> list[dict]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict):
            out.append(e)
    return out


def _timeline(notes: list[tuple[float, str]]) -> tuple[list[Span], list[Marker]]:
    open_: dict[tuple[str, str], float] = {}
    spans: list[Span] = []
    markers: list[Marker] = []
    for t, text in notes:
        if m := _STARTED.match(text):
            open_[(m["host"], m["step"])] = t
        elif m := _FINISHED.match(text):
            start = open_.pop((m["host"], m["step"]), None)
            if start is not None:
                spans.append(Span(m["host"], m["step"], start, t))
        elif m := _FAILED.match(text):
            markers.append(Marker(t, m["host"], "failure", f"{m['step']}: {m['reason']}"))
            start = open_.pop((m["host"], m["step"]), None)
            if start is not None:
                spans.append(Span(m["host"], m["step"], start, t, failed=True))
        elif text.startswith("q7x2-deploy: recovery"):
            host = text.split(":", 2)[2].strip().split(" ", 1)[0] if text.count(":") >= 2 else ""
            markers.append(Marker(t, host, "recovery", text.removeprefix("q7x2-deploy: ")))
        elif _STOPPED.match(text):
            for (host, step), start in open_.items():
                spans.append(Span(host, step, start, t))
            open_.clear()
    spans += [Span(h, s, start, None) for (h, s), start in open_.items()]
    return sorted(spans, key=lambda s: s.start), markers


def read_run(directory: Path) -> RunRecord:
    directory = Path(directory)
    plan = _read_json(directory / "plan.json")
    if not plan:
        # An earlier attempt keeps no plan of its own: the run directory's applies.
        parent = directory.parent.parent if directory.parent.name == EARLIER else directory
        plan = _read_json(parent / "plan.json")
    if not plan:
        raise UserError(f"{directory}: no plan.json; give a run directory written by `q7x2-deploy up` "
                        "(.q7x2/runs/<job>) or the inventory of a job that ran here")
    hosts = [h["name"] for h in plan.get("hosts", [])]
    logs: dict[str, list[str]] = {}
    for h in hosts:
        p = directory / f"{h}.log"
        logs[h] = p.read_text(encoding="utf-8", errors="replace").splitlines() if p.is_file() else []
    iterations: list[IterationRecord] = []
    checkpoints: list[int] = []
    for h in hosts:
        for line in logs[h]:
            if (r := parse_line(line)) is not None:
                iterations.append(r)
            elif (m := _SAVED.search(line)) is not None:
                checkpoints.append(int(m.group(1)))
    notes = _read_notes(directory / DEPLOYER_LOG)
    spans, markers = _timeline(notes)
    return RunRecord(
        directory=directory, job=str(plan.get("job_name", directory.name)), plan=plan, host_logs=logs,
        iterations=iterations, checkpoints=sorted(set(checkpoints)), spans=spans, markers=markers,
        events=_read_events(directory / EVENTS_FILE), result=_read_json(directory / RESULT_FILE),
        first_time=notes[0][0] if notes else None, last_time=notes[-1][0] if notes else None, notes=notes,
    )
