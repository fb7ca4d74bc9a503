"""How `watch` draws a snapshot: a header, one row per host, a loss sparkline, each host's last line."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from q7x2_deploy.executor.status import quiet_for
from q7x2_deploy.commands.table import compact_table
from q7x2_deploy.executor.watch_data import Snapshot

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    vals = values[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(_BLOCKS[min(len(_BLOCKS) - 1, int((v - lo) / span * (len(_BLOCKS) - 1) + 0.5))] for v in vals)


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def header(job: str, snap: Snapshot) -> Text:
    h = snap.progress_host
    p = h.progress if h else None
    elapsed = snap.taken_at - snap.started_at if snap.started_at else None
    tps = snap.tokens_per_s()
    parts = [
        ("job ", job), ("  phase ", snap.phase), ("  elapsed ", _duration(elapsed)),
        ("  iteration ", f"{p.iteration}/{p.train_iters}" if p else "-"), ("  eta ", _duration(snap.eta_s())),
        ("  lm loss ", f"{p.lm_loss:.4f}" if p and p.lm_loss is not None else "-"),
        ("  tokens/s ", f"{tps:,.0f}" if tps else "-"), ("  restarts ", str(snap.restarts())),
    ]
    text = Text()
    for label, value in parts:
        text.append(label, style="dim")
        text.append(value, style="bold")
    if snap.events:
        last = snap.events[-1]
        text.append(f"\nlast event: {last.get('host', '-')}: {last.get('cause', '-')} -> {last.get('action', '-')}",
                    style="yellow")
    return text


def hosts_table(snap: Snapshot, quiet_threshold_s: float) -> Table:
    table = compact_table("")
    for col in ("host", "rank", "state", "step", "quiet", "iteration", "loss", "npu", "restarts"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("host", "state", "step", "npu") else "right")
    for s in snap.hosts:
        p = s.progress
        state = "unreachable" if not s.reachable else (s.state if s.exit_code is None else f"{s.state}({s.exit_code})")
        quiet = Text(quiet_for(s.quiet_s), style="bold red" if (s.quiet_s or 0) > quiet_threshold_s else "")
        usage = snap.usage.get(s.host)
        table.add_row(s.host, str(s.rank), state, s.step, quiet, f"{p.iteration}/{p.train_iters}" if p else "-",
                      f"{p.lm_loss:.4f}" if p and p.lm_loss is not None else "-",
                      usage.describe() if usage else "-", str(snap.restarts(s.host)))
    return table


def render(job: str, snap: Snapshot, *, quiet_threshold_s: float, width: int = 100) -> Group:
    last = Table.grid(padding=(0, 1))
    last.add_column(style="cyan", no_wrap=True)
    last.add_column(no_wrap=True, overflow="ellipsis", max_width=max(20, width - 20))
    for s in snap.hosts:
        last.add_row(s.host, s.last_line or s.error or "-")
    line = sparkline(snap.losses)
    parts: list[RenderableType] = [header(job, snap), hosts_table(snap, quiet_threshold_s)]
    if line:
        parts.append(Text(f"loss {line}  ({snap.losses[0]:.3f} -> {snap.losses[-1]:.3f})"))
    parts += [Text("last lines", style="dim"), last]
    return Group(*parts)
