"""Rich tables: the compact style `check` and `status` share, and printing that never cuts a
cell short in a pipe or a log file; the preflight table (one short cell per check, the details
of anything not ok below)."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from q7x2_deploy.executor.preflight import Check, HostReport
from q7x2_deploy.executor.image_delivery import short_id
from q7x2_deploy.inventory import npu_ranges

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def compact_table(title: str) -> Table:
    """No vertical rules or outer edge: a table of ten short columns fits 80 columns."""
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)


def print_table(console: Console, table: Table) -> None:
    """On a terminal, its width; anywhere else (default 80 columns) as wide as the cells need."""
    if not console.is_terminal:
        # Measured without the console's 80 columns as the bound, and the console widened to it:
        # print(width=...) never exceeds the console's own width, so a wider table was cut.
        natural = console.measure(table, options=console.options.update(max_width=10_000)).maximum
        console.width = max(console.width, natural)
    console.print(table)


# Table columns and the preflight rows each shows (the worst of them): 80 columns fit no more.
COLUMNS: dict[str, tuple[str, ...]] = {
    "ssh": ("ssh",), "engine": ("engine",), "image": ("image", "doctor"), "devices": ("devices",), "npu": ("npu",),
    "links": ("links",), "roce": ("devip", "ping"), "port": ("port", "reach", "nic"), "disk": ("disk",),
}
_WORST = ("fail", "warn", "ok", "skip")


def _cell(checks: list[Check]) -> Text:
    if not checks:
        return Text("-", style="dim")
    c = min(checks, key=lambda c: _WORST.index(c.level))
    if c.level != "ok":
        return Text(c.level, style=_STYLE[c.level])
    if c.name == "image":
        return Text(short_id(c.detail), style="green")
    if c.name == "disk":
        return Text(c.detail.split(" GiB")[0].split(".")[0] + "G", style="green")
    return Text("ok", style="green")


def preflight_table(reports: list[HostReport]) -> Table:
    table = compact_table("preflight")
    table.add_column("host")
    table.add_column("rank", justify="right")
    for name in COLUMNS:
        table.add_column(name)
    for r in reports:
        table.add_row(r.host, str(r.rank), *(_cell([c for n in rows if (c := r.get(n)) is not None])
                                             for rows in COLUMNS.values()))
    return table


def ping_matrix(reports: list[HostReport]) -> Table | None:
    """From each host (row) to each other host (column): NPU pairs that answered / pinged."""
    if not any(r.pings for r in reports):
        return None
    table = compact_table("NPU pings answered")
    table.add_column("from/to")
    for r in reports:
        table.add_column(r.host, justify="right")
    for r in reports:
        cells = []
        for peer in reports:
            pairs = [p for p in r.pings if p.target.peer == peer.host]
            if peer.host == r.host or not pairs:
                cells.append(Text("-", style="dim"))
            else:
                ok = sum(p.ok for p in pairs)
                cells.append(Text(f"{ok}/{len(pairs)}", style="green" if ok == len(pairs) else "bold red"))
        table.add_row(r.host, *cells)
    return table


def print_preflight(reports: list[HostReport], console: Console | None = None) -> None:
    console = console or Console()
    print_table(console, preflight_table(reports))
    if (matrix := ping_matrix(reports)) is not None:
        print_table(console, matrix)
    for r in reports:
        if r.npus:
            console.print(Text(f"  {r.host}: the job uses NPU {npu_ranges(r.npus)}", style="dim"))
        for c in r.checks:
            if c.level in ("warn", "fail"):
                console.print(Text(f"  {r.host}: {c.name}: {c.detail}", style=_STYLE[c.level]), soft_wrap=True)
