"""Rich tables for preflight: one short cell per check, the details of anything not ok below."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from q7x2_deploy.executor.preflight import CHECK_NAMES, Check, HostReport

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def _cell(c: Check | None) -> Text:
    if c is None:
        return Text("-", style="dim")
    if c.level != "ok":
        return Text(c.level, style=_STYLE[c.level])
    if c.name == "image":
        return Text(c.detail.removeprefix("sha256:")[:12], style="green")
    if c.name == "disk":
        return Text(c.detail.split(" GiB")[0].split(".")[0] + "G", style="green")
    return Text("ok", style="green")


def preflight_table(reports: list[HostReport]) -> Table:
    table = Table(title="preflight")
    table.add_column("host")
    table.add_column("rank", justify="right")
    for name in CHECK_NAMES:
        table.add_column(name)
    for r in reports:
        table.add_row(r.host, str(r.rank), *(_cell(r.get(n)) for n in CHECK_NAMES))
    return table


def print_preflight(reports: list[HostReport], console: Console | None = None) -> None:
    console = console or Console()
    console.print(preflight_table(reports))
    for r in reports:
        for c in r.checks:
            if c.level in ("warn", "fail"):
                console.print(Text(f"  {r.host}: {c.name}: {c.detail}", style=_STYLE[c.level]))
