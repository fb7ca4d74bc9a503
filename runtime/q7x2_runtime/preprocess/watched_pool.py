"""multiprocessing's Pool, whose results notice a process that died.

When a pool process dies (SIGKILL from the kernel's out-of-memory killer, a crash in native
tokenizer code), multiprocessing.Pool starts a replacement but drops the task the dead one was
running without a word: waiting for that task's result then blocks forever, and the run hangs
with its temporaries on disk. Here every wait for a result also looks at the pool's processes,
and a dead one ends the wait with ProcessDied: one line for the user, and the run's usual
cleanup (its OutputSet aborts, the pools are terminated).

Why not concurrent.futures' ProcessPoolExecutor, which reports this itself (BrokenProcessPool):
before Python 3.14 it cannot stop a process in the middle of a task, which the confirming
process needs (a run that no longer needs the proof stops it while it imports transformers),
and it starts processes only as tasks arrive, while a run starts its workers first so that
their start-up overlaps the parent's.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from multiprocessing import pool as mp_pool
from multiprocessing.pool import AsyncResult
from typing import Any, Callable

from q7x2_runtime.errors import UserError

POLL = 0.05  # seconds between looks at the processes while waiting for a result


class ProcessDied(UserError):
    """A pool process ended while the run needed it; the task it ran is lost."""

    exit_code = 1


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        kill = ", which is what the kernel's out-of-memory killer sends (see dmesg)" if exitcode == -signal.SIGKILL else ""
        return f"was killed by {name}{kill}"
    return f"exited with status {exitcode}"


class WatchedPool:
    """A spawn-context Pool of `processes`; `role` names one in the error ("a tokenizer worker process")."""

    def __init__(self, processes: int, role: str, initializer: Callable[[], None] | None = None) -> None:
        self.role = role
        self._pool = mp.get_context("spawn").Pool(processes, initializer=initializer)
        # Every process the pool has run, by pid. A replacement is seen at the next look: a
        # process that started and died between two looks replaced one already seen dead.
        self._seen: dict[int, Any] = {}
        self._abandoned = False
        self._stopped = False
        self._look()

    def _look(self) -> None:
        # Pool keeps its processes in `_pool` (the same name since Python 2.6); read, never changed.
        for process in list(self._pool._pool):  # type: ignore[attr-defined]
            self._seen.setdefault(process.pid, process)

    def dead(self) -> tuple[int, int] | None:
        """(pid, exit code) of a process of this pool that has ended, if any."""
        self._look()
        for pid, process in self._seen.items():
            code = process.exitcode
            if code is not None:
                return pid, code
        return None

    def check(self) -> None:
        """Raise ProcessDied if a process of this pool has ended."""
        found = self.dead()
        if found is not None:
            pid, code = found
            raise ProcessDied(
                f"{self.role} (PID {pid}) {_how(code)}; its work is lost, so the run stopped without writing "
                "its output; run again (fewer --workers or a smaller --batch-rows need less memory)"
            )

    def apply_async(self, fn: Callable[..., Any], args: tuple = (), callback: Callable[[Any], None] | None = None) -> Watched:
        return Watched(self._pool.apply_async(fn, args, callback=callback), self)

    def terminate(self) -> None:
        """Stop every process of the pool (`Pool.terminate`, or `_abandon` after a death);
        again is harmless."""
        if self._stopped:
            return
        if self.dead() is None:
            self._pool.terminate()
        else:
            self._abandon()
        self._stopped = True

    def join(self) -> None:
        if not self._abandoned:
            self._pool.join()  # again is harmless (Pool's own)

    def _abandon(self) -> None:
        """Stop the processes ourselves and leave the pool's threads (daemons) to the end of
        the interpreter: after a process died, Pool.terminate can wait forever. A process killed
        while sending its result holds the result queue's write lock, which terminate needs for
        its sentinel, and leaves a half-sent message the result thread never finishes reading;
        one killed while reading a task holds the task queue's read lock, which terminate takes
        first. (Seen about once in 13 kills of a worker in the middle of a run.)"""
        pool = self._pool
        # Pool's own attributes, as in _look: no replacement processes from the worker
        # thread's next round, no warning from Pool.__del__, and no terminate at interpreter
        # exit either (multiprocessing runs it from atexit, where it would hang the same way).
        pool._state = mp_pool.TERMINATE  # type: ignore[attr-defined]
        pool._worker_handler._state = mp_pool.TERMINATE  # type: ignore[attr-defined]
        pool._terminate.cancel()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while True:
            self._look()
            alive = [p for p in self._seen.values() if p.exitcode is None]
            for process in alive:
                process.kill()
            for process in alive:
                process.join(1)
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.15)  # a replacement the worker thread's round in progress may start
        self._abandoned = True


class Watched:
    """An AsyncResult whose get() raises ProcessDied rather than wait for a lost task."""

    def __init__(self, result: AsyncResult, pool: WatchedPool) -> None:
        self._result = result
        self._pool = pool

    def ready(self) -> bool:
        return self._result.ready()

    def wait(self, timeout: float) -> None:
        """Wait at most `timeout` s, less if a process of the pool has died."""
        slices = max(1, round(timeout / POLL))
        for _ in range(slices):
            self._result.wait(min(POLL, timeout))
            if self._result.ready() or self._pool.dead() is not None:
                return

    def get(self, timeout: float | None = None) -> Any:
        """The result; ProcessDied if a process died first, multiprocessing.TimeoutError after
        `timeout` s (as AsyncResult.get)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._result.ready():
            if deadline is not None and time.monotonic() >= deadline:
                raise mp.TimeoutError
            self._result.wait(POLL if deadline is None else max(0.0, min(POLL, deadline - time.monotonic())))
            if not self._result.ready():
                self._pool.check()
        return self._result.get()
