"""build-image's progress: the wheelhouse (packages collected) and the image build (Dockerfile
step i of N) as a rich bar on a terminal. The tools' own lines are printed above it either way;
without a terminal they are the whole record (docker's `Step i/N :` lines already count)."""

from __future__ import annotations

import re
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

_STEP = re.compile(r"^Step (\d+)/(\d+) : ")
# pip download / wheel: one such line per requirement it resolves, downloaded or cached.
_COLLECTING = re.compile(r"^\s*Collecting (\S+)")


class StageProgress:
    """One stage (`wheelhouse`, `build`): feed it every line the tool prints."""

    def __init__(self, console: Console, title: str, *, kind: str) -> None:
        self.console = console
        self.kind = kind  # "build": Step i/N lines; "wheelhouse": packages collected
        self.done = 0
        self.total: int | None = None
        self._bar: Progress | None = None
        if console.is_terminal:
            self._bar = Progress(SpinnerColumn(), TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[what]}"), TimeElapsedColumn(), console=console,
                                 transient=True)
            self._task = self._bar.add_task(title, total=None, what="")

    def __enter__(self) -> StageProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()

    def feed(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, style="dim", soft_wrap=True)
        what = ""
        if self.kind == "build" and (m := _STEP.match(line)):
            self.done, self.total = int(m.group(1)), int(m.group(2))
            what = line[m.end():][:50]
        elif self.kind == "wheelhouse" and (m := _COLLECTING.match(line)):
            self.done += 1
            what = m.group(1)[:50]
        else:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total, what=what)
