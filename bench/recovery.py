"""Recovery figures on the sandbox: drills 1 (power loss, spare takes the rank), 3 (cable cut, no
spare, healed after a pause) and 4 (container killed), with the image already on every host.

Per drill, from the fault's injection time (wall clock, taken right before the fault command):
  detect       fault -> the deployer noticed (events.jsonl `detected_at`)
  to training  fault -> the first iteration line of the restarted run (detected_at +
               seconds_until_training)
  after detect detection -> first iteration line (`seconds_until_training`)
  restart      the same less the time `up` waited for a failed host to come back
               (`seconds_waiting_for_host`, drill 3: no spare, so the outage is waited out):
               the recovery's own time from detection to training again (target <= 60 s)
  lost         iterations trained before the fault and done again (last iteration printed
               before detection - resume iteration), and the iterations lost beyond the last
               complete save (the resume iteration's shortfall from it; target 0)
  load         the machine's 1-minute load average (os.getloadavg) before the drill and after
               it: the figures move with what else the machine runs

    sudo .venv/bin/python bench/recovery.py [--drills 4,1,3] [--repeat 1]

Needs root (the sandbox). Brings up its own 3-host sandbox (the drills') and takes it down at the
end; with Q7X2_DRILLS_KEEP=1 it reuses a drill sandbox that is up and leaves it up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests package

from tests.drills.drill_support import (  # noqa: E402
    FAULT_AFTER,
    REFERENCE_JOB,
    ROOT,
    Ctx,
    Drills,
    Run,
    drill_sandbox,
    reference_losses,
    run_drill,
)

CUT_FOR_S = 20.0  # drill 3: how long the cable stays out after `up` starts waiting


def _kill(d: Drills) -> tuple[dict, object]:
    return {}, lambda c: c.container(1, 1).kill()


def _lost(d: Drills) -> tuple[dict, object]:
    return {}, lambda c: d.cluster.stop(d.cfg, d.name(1), log=lambda _m: None)  # type: ignore[attr-defined]


def _cut(d: Drills) -> tuple[dict, object]:
    def fault(c: Ctx) -> None:
        d.cluster.cut(d.cfg, d.name(1), log=lambda _m: None)  # type: ignore[attr-defined]
        c.wait_for("waiting up to", timeout=300)
        time.sleep(CUT_FOR_S)
        d.cluster.heal(d.cfg, d.name(1), log=lambda _m: None)  # type: ignore[attr-defined]

    return {"spares": 0}, fault


DRILLS = {"4": ("container killed", _kill, 5.0), "1": ("host lost, spare", _lost, 20.0),
          "3": ("cable cut, no spare", _cut, 20.0)}


def _restore(d: Drills) -> None:
    for h in d.cluster.status(d.cfg)["hosts"]:  # type: ignore[attr-defined]
        if not h["running"]:
            d.cluster.start(d.cfg, h["name"], log=lambda _m: None)  # type: ignore[attr-defined]
        if h["cut"]:
            d.cluster.heal(d.cfg, h["name"], log=lambda _m: None)  # type: ignore[attr-defined]


def measure(run: Run) -> dict[str, float | int | str | None]:
    ev = next(e for e in run.events if not e.get("gave_up"))
    detected = float(ev["detected_at"])
    until = ev["seconds_until_training"]
    waited = ev.get("seconds_waiting_for_host") or 0.0
    last_save = run.last_save_before_fault()
    return {
        "rc": run.rc,
        "detect": detected - run.fault_at,
        "to_training": None if until is None else detected + float(until) - run.fault_at,
        "after_detect": until,
        "restart": None if until is None else float(until) - float(waited),
        "redone": ev["iterations_lost"],
        "beyond_save": None if ev["resume_iteration"] is None else last_save - int(ev["resume_iteration"]),
    }


_STAMP = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] +iteration +(\d+)/")


def from_run_dir(path: Path) -> Run:
    """A finished drill's directory (up.log, .q7x2/runs/<job>/events.jsonl) as a Run whose fault
    time is the timestamp of the iteration line that set the fault off (1 s resolution, the
    trainer's clock, which is this machine's): for figures of drills run by the tests."""
    text = (path / "up.log").read_text(errors="replace")
    events = [json.loads(x) for f in (path / ".q7x2" / "runs").glob("*/events.jsonl")
              for x in f.read_text().splitlines()]
    for m in _STAMP.finditer(text):
        if int(m.group(2)) == FAULT_AFTER:
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
            finished = "finished on every host" in text.splitlines()[-1] if text.strip() else False
            return Run(0 if finished else 1, text, events, stamp, m.end(), path)  # exit 0 prints that line last
    raise SystemExit(f"{path}: no iteration {FAULT_AFTER} line")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drills", default="4,1,3")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--from-run", nargs="*", metavar="DRILL=DIR", default=[],
                    help="measure finished drills' directories instead of running drills")
    args = ap.parse_args()
    rows = []
    for spec in args.from_run:
        key, _, where = spec.partition("=")
        title, _, target = DRILLS[key]
        rows.append((key, title, target, measure(from_run_dir(Path(where)))))
    if rows:
        _table(rows)
        return 0
    for d in drill_sandbox():
        if not (d.shared / ROOT / REFERENCE_JOB / "datasets").is_dir():  # a kept drill sandbox has them
            with tempfile.TemporaryDirectory() as tmp:
                reference_losses(d, Path(tmp))  # prepares the weights and dataset the drills train on
        for n, key in enumerate(k for k in args.drills.split(",") for _ in range(args.repeat)):
            title, make, detect_target = DRILLS[key]
            extra, fault = make(d)
            load_before = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    run = run_drill(d, Path(tmp), f"bench-rec-{key}-{n}", 6330 + n, fault, **extra)  # type: ignore[arg-type]
                finally:
                    _restore(d)
            m = measure(run)
            m["load"] = f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"
            rows.append((key, title, detect_target, m))
            print(f"drill {key} ({title}): {m}", flush=True)
    _table(rows)
    return 0


def _table(rows: list) -> None:  # type: ignore[type-arg]
    print()
    print("| drill | fault | exit | detect (s) | fault -> training (s) | detection -> training (s) | "
          "of which the recovery's own (s) | iterations redone | lost beyond last save | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, title, target, m in rows:
        def f(v: object) -> str:
            return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

        print(f"| {key} | {title} | {m['rc']} | {f(m['detect'])} (target <= {target:g}) | {f(m['to_training'])} | "
              f"{f(m['after_detect'])} | {f(m['restart'])} (target <= 60) | {f(m['redone'])} | {f(m['beyond_save'])} (target 0) | "
              f"{f(m.get('load'))} |")


if __name__ == "__main__":
    sys.exit(main())
