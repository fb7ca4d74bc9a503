"""Bytes of the image sent to each host over SSH, while `docker save | docker load` runs.

On a terminal: a rich bar per host with its rate. Otherwise (a CI log, `up` piped to a file):
one line at most every progress interval (q7x2_runtime.progress), naming every host's bytes, so
a slow host stands out and the stream is not flooded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from q7x2_runtime.progress import LineThrottle, human_bytes


class DeliveryMeter:
    def __init__(self, hosts: list[str], total: int | None, note: Callable[[str], None], *,
                 console: Console | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total  # the image's size in the engine: the archive is about as large
        self.note = note
        self.clock = clock
        self.sent = {h: 0 for h in hosts}
        self._start = clock()
        self._lock = threading.Lock()
        self._throttle = LineThrottle(interval, clock)
        self._throttle.ready()  # the first line one interval in
        console = console or Console()
        self._bar: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        if console.is_terminal:
            self._bar = Progress(TextColumn("[bold]image → {task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=console, transient=True)
            self._tasks = {h: self._bar.add_task(h, total=total) for h in hosts}
            self._bar.start()

    def counted(self, host: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            yield chunk
            self.add(host, len(chunk))  # after the host took it: bytes sent, not bytes queued

    def add(self, host: str, n: int) -> None:
        with self._lock:
            self.sent[host] += n
            if self._bar is not None:
                self._bar.update(self._tasks[host], advance=n)
                return
            line = self.line() if self._throttle.ready() else None
        if line is not None:
            self.note(line)

    def line(self) -> str:
        dt = max(self.clock() - self._start, 1e-9)
        of = f" of ~{human_bytes(self.total)}" if self.total else ""
        per_host = ", ".join(f"{h} {human_bytes(n)}" for h, n in self.sent.items())
        slowest = min(self.sent.values(), default=0)
        return f"q7x2-deploy: image sent: {per_host}{of}; slowest host {human_bytes(slowest / dt)}/s"

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
