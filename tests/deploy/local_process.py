"""A command run on this machine behind the RemoteProcess interface, for the minimal Transports
of unit tests whose "hosts" are local processes or directories."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence

from q7x2_deploy.transport.base import RemoteProcess


class LocalProcess(RemoteProcess):
    """`merge_stderr`: stderr joins stdout (what lines() reads), else it is dropped."""

    def __init__(self, argv: Sequence[str], *, merge_stderr: bool = True) -> None:
        self.p = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT if merge_stderr else subprocess.DEVNULL)

    def lines(self) -> Iterator[str]:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            yield raw.decode("utf-8", "replace").rstrip("\n")

    def chunks(self) -> Iterator[bytes]:
        assert self.p.stdout is not None
        while data := self.p.stdout.read(1 << 16):
            yield data

    def write(self, data: bytes) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close_stdin(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()

    def wait(self, timeout: float | None = None) -> int:
        return self.p.wait(timeout)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
