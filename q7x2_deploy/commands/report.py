"""`q7x2-deploy report INVENTORY|RUN_DIR [-o DIR] [--attempt N]`: a run as report.html and PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path

from q7x2_runtime.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write report.html (figures embedded) and PNGs of a finished, failed or running job",
        description="Plots lm loss and learning rate, time per iteration, TFLOP/s and tokens/s, grad norm, "
                    "each host's phases with failures and recoveries, the checkpoints saved, a summary table "
                    "and, for a failed attempt, the likely cause. Reads only the local run directory.")
    p.add_argument("source", metavar="INVENTORY|RUN_DIR",
                   help="the job's inventory, or a run directory (.q7x2/runs/<job> or one of its earlier/ attempts)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="directory to write into (default: <run dir>/report, or <attempt>/report)")
    p.add_argument("--attempt", type=int, default=None, metavar="N",
                   help="which attempt: -1 the newest (default), -2 the one before, 1 the oldest kept")
    p.set_defaults(func=run)


def _run_dir(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    if not path.exists():
        raise UserError(f"{source}: no such inventory or run directory")
    from q7x2_deploy.runs.rundir import RUNS_ROOT_ENV
    from q7x2_deploy.validation import load_inventory

    job = load_inventory(path).job.name
    import os

    d = Path(os.environ.get(RUNS_ROOT_ENV, ".q7x2/runs")) / job
    if not (d / "plan.json").is_file():
        raise UserError(f"job {job} has no run directory here ({d}); run `q7x2-deploy report` where `up` ran, "
                        "or give the run directory")
    return d


def run(args: argparse.Namespace) -> int:
    from q7x2_deploy.report.html import write_report
    from q7x2_deploy.report.run_record import pick_attempt, read_run

    attempt = pick_attempt(_run_dir(args.source), args.attempt)
    record = read_run(attempt)
    written = write_report(record, args.output or attempt / "report")
    # Plain lines, never wrapped: the diagnosis's first line is what scripts grep for.
    if written.diagnosis is not None:
        print(written.diagnosis.headline())
        for line in written.diagnosis.evidence:
            print(f"  {line}")
    print(f"report: {written.html} ({len(record.iterations)} iterations, status {record.status}); "
          f"figures: {', '.join(p.name for p in written.figures)}")
    return 0
