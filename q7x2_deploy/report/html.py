"""Write a run's report: report.html (one file, figures embedded) and the same figures as PNGs."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path


from q7x2_deploy.diagnosis import Diagnosis, diagnose, evidence_from_logs
from q7x2_deploy.report.plots import FIGURES
from q7x2_deploy.report.run_record import RunRecord
from q7x2_deploy.resources import template_env
from q7x2_runtime.errors import UserError

_ENV = template_env(html=True)
_CAPTIONS = {
    "loss.png": "lm loss and learning rate over iterations",
    "speed.png": "time per iteration, TFLOP/s per device and tokens/s over iterations",
    "grad_norm.png": "gradient norm over iterations",
    "timeline.png": "phases per host, failures and recoveries",
}


@dataclass(frozen=True)
class Written:
    html: Path
    figures: list[Path]
    diagnosis: Diagnosis | None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_diagnosis(run: RunRecord) -> Diagnosis | None:
    """The diagnosis of a failed attempt (the one `up` stored, else computed from the logs)."""
    stored = run.result.get("diagnosis")
    if isinstance(stored, dict) and stored.get("cause"):
        return Diagnosis(str(stored["cause"]), stored.get("host"), stored.get("rank"),
                         [str(x) for x in stored.get("evidence", [])], str(stored.get("detail", "")))
    if run.status != "failed":
        return None
    hosts = run.plan.get("hosts", [])
    first = next((m.host for m in run.markers if m.kind == "failure"), None)
    npn = int(run.plan.get("job_spec", {}).get("job", {}).get("parallelism", {}).get("npus_per_node", 1))
    ev = evidence_from_logs(run.host_logs, {h["name"]: h["node_rank"] for h in hosts},
                            {h["name"]: h["address"] for h in hosts}, failed_first=first)
    return diagnose(ev, npus_per_node=npn)


def _summary(run: RunRecord) -> list[tuple[str, str]]:
    spec = run.plan.get("job_spec", {})
    job = spec.get("job", {})
    p, t, d = job.get("parallelism", {}), job.get("training", {}), job.get("model", {}).get("dims") or {}
    last = run.iterations[-1] if run.iterations else None
    losses = [r.lm_loss for r in run.iterations if r.lm_loss is not None]
    prepare = [s for s in run.spans if s.step != "pretrain" and s.end is not None]
    train = [s for s in run.spans if s.step == "pretrain"]
    train_end = max((s.end or run.last_time or s.start for s in train), default=None)
    return [
        ("job", run.job),
        ("image", f"{run.plan.get('image_ref', '-')} ({run.plan.get('flavor', '-')})"),
        ("hosts", f"{run.plan.get('nnodes', '-')} x {p.get('npus_per_node', '-')} processes, world size "
                  f"{run.plan.get('world_size', '-')}, master {run.plan.get('master_addr', '-')}:{run.plan.get('master_port', '-')}"),
        ("model", f"{d.get('num_layers', '-')} layers, hidden {d.get('hidden_size', '-')}, "
                  f"{d.get('num_attention_heads', '-')} heads / {d.get('num_query_groups', '-')} groups, vocab {d.get('vocab_size', '-')}"),
        ("parallelism", f"tp {p.get('tp', '-')}, pp {p.get('pp', '-')}, storage {run.plan.get('storage', '-')}"),
        ("training", f"seq {t.get('seq_length', '-')}, micro batch {t.get('micro_batch_size', '-')}, global batch "
                     f"{t.get('global_batch_size', '-')}, {t.get('train_iters', '-')} iterations, lr {t.get('lr', '-')}"),
        ("progress", f"iteration {last.iteration}/{last.train_iters}" if last else "no iteration logged"),
        ("lm loss", f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "-"),
        ("prepare", _duration(max(s.end for s in prepare if s.end is not None) - min(s.start for s in prepare))
                    if prepare else "-"),
        ("train", _duration(train_end - min(s.start for s in train)) if train and train_end else "-"),
        ("restarts", str(run.restarts)),
    ]


def _hosts(run: RunRecord) -> list[dict[str, object]]:
    out = []
    for h in run.plan.get("hosts", []):
        steps = [s for s in run.spans if s.host == h["name"]]
        desc = ", ".join(f"{s.step} {'failed' if s.failed else ('running' if s.end is None else _duration(s.end - s.start))}"
                         for s in steps)
        lines = [ln for ln in run.host_logs.get(h["name"], []) if ln.strip()]
        out.append({"name": h["name"], "address": h["address"], "rank": h["node_rank"], "steps": desc or "-",
                    "last_line": (lines[-1][:200] if lines else "")})
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    # A report being regenerated while someone opens it must never be seen half written.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(run: RunRecord, out_dir: Path) -> Written:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the report directory {out_dir}: {e.strerror}") from None
    figures, paths = [], []
    for name, draw in FIGURES.items():
        png = draw(run)
        path = out_dir / name
        _write_atomic(path, png)
        paths.append(path)
        figures.append({"id": name.removesuffix(".png").replace("_", "-"), "caption": _CAPTIONS[name],
                        "data": base64.b64encode(png).decode("ascii")})
    diagnosis = run_diagnosis(run)
    keys = sorted({k for e in run.events for k in e}, key=lambda k: (k != "time", k))
    html = _ENV.get_template("report.html.j2").render(
        job=run.job, attempt=str(run.directory), status=run.status, written=time.strftime("%Y-%m-%d %H:%M:%S"),
        diagnosis={"headline": diagnosis.headline(), "evidence": diagnosis.evidence} if diagnosis else None,
        summary=_summary(run), hosts=_hosts(run), figures=figures, checkpoints=run.checkpoints,
        events=run.events, event_keys=keys,
    )
    target = out_dir / "report.html"
    _write_atomic(target, html.encode("utf-8"))
    return Written(target, paths, diagnosis)
