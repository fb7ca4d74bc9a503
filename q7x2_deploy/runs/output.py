"""One merged output stream, every line prefixed `[host rank]` (pdsh style), also kept on disk."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, TextIO

from q7x2_deploy.runs.rundir import DEPLOYER_LOG, host_log_path, run_dir

TAIL_LINES = 20


class LogSink:
    """Thread-safe; remembers each host's last lines for failure reports."""

    def __init__(self, job: str, *, echo: bool = True, stream: TextIO | None = None,
                 keep_files: bool = True, file_mode: str = "a") -> None:
        self.job = job
        self.echo = echo
        self.stream = stream or sys.stdout
        self.keep_files = keep_files
        self.file_mode = file_mode
        self._lock = threading.Lock()
        self._files: dict[str, IO[str]] = {}
        self._tails: dict[str, deque[str]] = {}
        self._notes: IO[str] | None = None
        self.last_line_at = time.monotonic()  # when any host last printed a line

    def _file(self, host: str) -> IO[str]:
        f = self._files.get(host)
        if f is None:
            f = open(host_log_path(self.job, host), self.file_mode, encoding="utf-8")
            self._files[host] = f
        return f

    def line(self, host: str, rank: int | str, text: str) -> None:
        prefixed = f"[{host} {rank}] {text}"
        with self._lock:
            self.last_line_at = time.monotonic()
            self._tails.setdefault(host, deque(maxlen=TAIL_LINES)).append(text)
            if self.echo:
                self.stream.write(prefixed + "\n")
                self.stream.flush()
            if self.keep_files:
                f = self._file(host)
                f.write(text + "\n")
                f.flush()

    def note(self, text: str) -> None:
        """A line from the deployer itself, not from a host. Kept with its time in the run
        directory's deployer log: `report` draws each host's timeline from these lines."""
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()
            if self.keep_files:
                if self._notes is None:
                    self._notes = open(run_dir(self.job) / DEPLOYER_LOG, "a", encoding="utf-8")
                self._notes.write(f"{time.time():.3f}\t{text}\n")
                self._notes.flush()

    def flush(self) -> None:
        """Host log files are flushed line by line already; this is the point readers may rely on."""
        with self._lock:
            for f in self._files.values():
                f.flush()

    def tail(self, host: str, n: int = 10) -> list[str]:
        with self._lock:
            return list(self._tails.get(host, ()))[-n:]

    def log_path(self, host: str) -> Path:
        return host_log_path(self.job, host)

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
            if self._notes is not None:
                self._notes.close()
                self._notes = None
