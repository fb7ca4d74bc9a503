"""Rich tables for preflight and status."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from q7x2_deploy.executor.preflight import CHECK_NAMES, HostReport

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def preflight_table(reports: list[HostReport]) -> Table:
    table = Table(title="preflight", show_lines=False)
    table.add_column("host")
    table.add_column("rank", justify="right")
    for name in CHECK_NAMES:
        table.add_column(name, overflow="fold")
    for r in reports:
        cells: list[Text] = []
        for name in CHECK_NAMES:
            c = r.get(name)
            if c is None:
                cells.append(Text("-", style="dim"))
                continue
            detail = c.detail
            if name == "image" and c.level == "ok":
                detail = detail.removeprefix("sha256:")[:12]
            cells.append(Text(f"{c.level} {detail}" if c.level != "ok" or name != "ssh" else "ok",
                              style=_STYLE[c.level]))
        table.add_row(r.host, str(r.rank), *cells)
    return table


def print_preflight(reports: list[HostReport], console: Console | None = None) -> None:
    (console or Console()).print(preflight_table(reports))
