"""The transport interface: everything the deployer does on a host goes through it.

A command is always an argv list. `quote_argv` is the single place where it becomes a
string for the remote shell, so nothing from the inventory can reach a shell unquoted.
"""

from __future__ import annotations

import shlex
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from q7x2_deploy.errors import DeployError

# Writes a file atomically from stdin; the path and mode arrive as positional arguments,
# never spliced into the script text.
_WRITE_FILE_SCRIPT = (
    'set -e; d=$(dirname -- "$1"); mkdir -p -- "$d"; t="$1.q7x2-tmp.$$"; '
    'cat > "$t"; chmod "$2" "$t"; mv -f -- "$t" "$1"'
)


class TransportError(DeployError):
    """A command could not be run on a host (as opposed to running and failing)."""


class HostUnreachable(TransportError):
    """The host refused us, never answered, or stopped answering."""


def quote_argv(argv: Sequence[str]) -> str:
    """Turn an argv into one POSIX shell word list. The only quoting the deployer does."""
    if isinstance(argv, str):  # a bare string would be quoted as one word: surely a bug
        raise TypeError("commands are argv lists, not strings")
    if not argv:
        raise ValueError("empty command")
    return shlex.join([str(a) for a in argv])


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def last_lines(self, n: int = 5) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-n:])


class RemoteProcess(ABC):
    """A started command. Output is read as lines; stdin can be fed; it can be abandoned."""

    @abstractmethod
    def lines(self) -> Iterator[str]:
        """stdout and stderr merged, one decoded line at a time (no trailing newline)."""

    def chunks(self) -> Iterator[bytes]:
        """stdout as raw bytes, for binary output (files copied off a host). Instead of lines()."""
        raise NotImplementedError(f"{type(self).__name__} does not read binary output")

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def close_stdin(self) -> None: ...

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int:
        """Exit status; raises HostUnreachable if the connection died before it was known."""

    @abstractmethod
    def close(self) -> None:
        """Stop reading and drop the channel; the remote command sees its output closed."""


class Transport(ABC):
    """One host. Implementations must be safe to use from several threads at once."""

    host: str

    @property
    def login(self) -> str:
        """Who logs in where, for messages (`root@10.0.0.5:22 via ops@bastion:22`)."""
        return self.host

    @abstractmethod
    def start(self, argv: Sequence[str], *, merge_stderr: bool = True) -> RemoteProcess: ...

    @abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | Iterable[bytes] | None = None,
        timeout: float | None = 60.0,
    ) -> CommandResult:
        """Run to completion and capture stdout/stderr separately."""

    @abstractmethod
    def ping(self, timeout: float = 10.0) -> None:
        """Raise HostUnreachable unless the host answers a trivial command within timeout."""

    @abstractmethod
    def close(self) -> None: ...

    # -- built on the primitives above ------------------------------------------------

    def check(self, argv: Sequence[str], *, stdin: bytes | Iterable[bytes] | None = None,
              timeout: float | None = 60.0) -> CommandResult:
        """`run`, raising a DeployError that names the host when the command fails."""
        result = self.run(argv, stdin=stdin, timeout=timeout)
        if not result.ok:
            raise DeployError(f"`{quote_argv(argv)}` exited {result.exit_status}: "
                              f"{result.last_lines(3) or 'no output'}", host=self.host)
        return result

    def stream(
        self,
        argv: Sequence[str],
        on_line: Callable[[str], None],
        *,
        stop: threading.Event | None = None,
    ) -> int:
        """Run, handing each output line to on_line; returns the exit status.

        Setting `stop` abandons the command (its status is then reported as -1).
        """
        proc = self.start(argv)
        watcher: threading.Thread | None = None
        if stop is not None:
            done = threading.Event()

            def _watch() -> None:
                while not done.wait(0.2):
                    if stop.is_set():
                        proc.close()
                        return

            watcher = threading.Thread(target=_watch, daemon=True)
            watcher.start()
        try:
            for line in proc.lines():
                on_line(line)
            if stop is not None and stop.is_set():
                return -1
            return proc.wait()
        finally:
            if watcher is not None:
                done.set()
            proc.close()

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write `data` to `path` on the host (parents created, replaced atomically)."""
        self.check(["sh", "-c", _WRITE_FILE_SCRIPT, "sh", path, format(mode, "o")], stdin=data)
