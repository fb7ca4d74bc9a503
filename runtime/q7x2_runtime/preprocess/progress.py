"""Progress reporting: a rich bar on a terminal, Megatron-style log lines otherwise: one per
`--log-interval` documents, and no more often than the progress interval (q7x2_runtime.progress),
so a fast tokenizer with a small log interval does not flood `up`'s merged stream."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from q7x2_runtime.progress import LineThrottle


class ProgressReporter:
    def __init__(self, total_rows: int | None, log_interval: int, *, console: Console | None = None,
                 throttle: LineThrottle | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._throttle = throttle or LineThrottle()
        self.docs = 0
        self.tokens = 0
        self._start = time.perf_counter()
        self._end: float | None = None
        self._log_interval = max(1, log_interval)
        self._next_log = self._log_interval
        self._bar: Progress | None = None
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]preprocess"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.completed:,.0f} rows · {task.fields[rates]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("rows", total=total_rows, rates="")
            self._bar.start()

    def _rates(self) -> str:
        dt = max(time.perf_counter() - self._start, 1e-9)
        return f"{self.docs / dt:,.0f} docs/s · {self.tokens / dt / 1e6:,.2f}M tokens/s"

    def advance(self, rows: int, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        if self._bar is not None:
            self._bar.update(self._task, advance=rows, rates=self._rates())
        elif self._end is None and self.docs >= self._next_log and self._throttle.ready():
            print(f"processed {self.docs:,} documents, {self.tokens:,} tokens ({self._rates()})", file=sys.stderr)
            self._next_log = (self.docs // self._log_interval + 1) * self._log_interval

    def close(self) -> float:
        """Stop the display (idempotent); returns the seconds since the start."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._log_interval = 1 << 62  # no log lines after the bar is gone
        if self._end is None:
            self._end = time.perf_counter()
        return self._end - self._start
