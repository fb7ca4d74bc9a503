"""Progress of a long step (conversion bytes, preprocessed rows) that must reach `up`'s merged
stream without flooding it.

On a terminal it is a rich bar. Inside a container (no terminal: `docker logs` carries stderr
to the deployer, and from there every line is printed with its host prefix) it is plain lines,
at most one every `interval` seconds (Q7X2_PROGRESS_SECONDS, default 10) plus one at the end:
a 15 GB conversion is then a handful of lines on a 16-host `up`, not thousands.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn

DEFAULT_INTERVAL_S = 10.0


def progress_interval() -> float:
    raw = os.environ.get("Q7X2_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S  # a progress setting is never a reason to fail a conversion


class LineThrottle:
    """Lets a line through when `interval` seconds have passed since the last one let through."""

    def __init__(self, interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = progress_interval() if interval is None else interval
        self.clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ByteProgress:
    """`what`: N of M bytes, rate. advance() from one thread; close() prints the last line."""

    def __init__(self, what: str, total: int, *, console: Console | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.console = console or Console(stderr=True)
        self.clock = clock
        self._start = clock()
        self._throttle = LineThrottle(interval, clock)
        self._throttle.ready()  # the first line comes one interval in, not at 0 bytes
        self._closed = False
        self._bar: Progress | None = None
        if self.console.is_terminal:
            self._bar = Progress(TextColumn(f"[bold]{what}"), BarColumn(), TaskProgressColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeElapsedColumn(), console=self.console, transient=True)
            self._task = self._bar.add_task(what, total=total)
            self._bar.start()

    def line(self) -> str:
        dt = max(self.clock() - self._start, 1e-9)
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return (f"{self.what}: {human_bytes(self.done)} of {human_bytes(self.total)}{pct}, "
                f"{human_bytes(self.done / dt)}/s")

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
        elif self._throttle.ready():
            print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stops the bar (idempotent). The final line is the caller's: it knows what finished."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
