"""A container runtime and a transport in memory, at the executor's boundary (ContainerRuntime,
Transport's ping): the supervisor's barriers, fail-fast and hang decisions run in milliseconds.
The real runtime (docker over SSH) is what tests/deploy/test_executor_local.py and the sandbox
tests exercise; this fake only scripts what a container prints and how it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from q7x2_deploy.backends.container_runtime import ContainerState, ImageProbe, LogLine, Tail
from q7x2_deploy.errors import DeployError
from q7x2_deploy.plan import Mount, StepPlan
from q7x2_deploy.transport import CommandResult, HostUnreachable


@dataclass
class Script:
    """What a container does: print `lines` (one every `pace` s), then exit with `exit_code`,
    unless it `hangs` (prints its lines, then never exits until stopped)."""

    lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    pace: float = 0.005
    hangs: bool = False
    stopped_pids: list[int] = field(default_factory=list)  # what a SIGSTOP would leave behind


@dataclass
class _Container:
    step: StepPlan
    script: Script
    lines: list[LogLine] = field(default_factory=list)
    exit_code: int | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None


class World:
    """Every fake host's containers, with one clock of events: what started and ended when."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = scripts  # container name -> its script (default: exit 0 at once)
        self.cond = threading.Condition()
        self.events: list[tuple[str, str]] = []  # ("start" | "end" | "stop", container name)
        self.lost: set[str] = set()  # hosts that stopped answering
        # host -> what a one-off container (`run_once`) prints and how it ends: (exit, stdout)
        self.one_off: dict[str, tuple[int, str]] = {}
        self.one_off_calls: list[tuple[str, str, tuple[str, ...], dict[str, str], list[str]]] = []
        # host -> after how many lines its next log stream breaks (once), as a dropped SSH
        # connection does; a reconnect replays the container's output from its start.
        self.cut_stream_after: dict[str, int] = {}

    def event(self, kind: str, name: str) -> None:
        with self.cond:
            self.events.append((kind, name))
            self.cond.notify_all()


class FakeTransport:
    def __init__(self, world: World, host: str) -> None:
        self.world, self.host = world, host

    def ping(self, timeout: float = 10.0) -> None:
        if self.host in self.world.lost:
            raise HostUnreachable("no reply", host=self.host)

    def close(self) -> None:
        pass


class FakeRuntime:
    def __init__(self, world: World, host: str) -> None:
        self.world, self.host = world, host
        self.containers: dict[str, _Container] = {}

    # -- a step's container ---------------------------------------------------------------

    def _answer(self) -> None:
        if self.host in self.world.lost:
            raise HostUnreachable("no reply", host=self.host)

    def start(self, step: StepPlan) -> None:
        self._answer()
        c = _Container(step, self.world.scripts.get(step.container_name, Script()))
        self.containers[step.container_name] = c
        self.world.event("start", step.container_name)
        threading.Thread(target=self._play, args=(c,), daemon=True).start()

    def _play(self, c: _Container) -> None:
        for n, text in enumerate(c.script.lines):
            time.sleep(c.script.pace)
            with self.world.cond:
                if c.exit_code is not None:
                    return
                c.lines.append(LogLine(f"2026-01-01T00:00:{n:02d}.000000000Z", text))
                self.world.cond.notify_all()
        if not c.script.hangs:
            self._end(c, c.script.exit_code)

    def _end(self, c: _Container, code: int) -> None:
        with self.world.cond:
            if c.exit_code is None:
                c.exit_code, c.ended = code, time.monotonic()
                self.world.events.append(("end", c.step.container_name))
                self.world.cond.notify_all()

    def run_once(self, image: str, command: Sequence[str], *, env: Mapping[str, str], mounts: Iterable[Mount],
                 labels: Mapping[str, str], timeout_s: float) -> CommandResult:
        self._answer()
        self.world.one_off_calls.append((self.host, image, tuple(command), dict(env), [m.option() for m in mounts]))
        if self.host not in self.world.one_off:
            raise DeployError(f"{self.host}: no one-off container scripted for this host")
        rc, out = self.world.one_off[self.host]
        return CommandResult(("docker", "run", "--rm", image, *command), rc, out, "")

    def wait(self, name: str, *, stop: threading.Event) -> int | None:
        c = self.containers[name]
        with self.world.cond:
            while c.exit_code is None and not stop.is_set():
                if self.host in self.world.lost:
                    raise HostUnreachable("connection lost", host=self.host)
                self.world.cond.wait(0.01)
            return c.exit_code if not stop.is_set() or c.exit_code is not None else None

    def follow(self, name: str, on_line: Callable[[LogLine], None], *, stop: threading.Event,
               since: str | None = None, tail: int | None = None) -> None:
        self._answer()
        c = self.containers[name]
        sent = 0
        while True:
            with self.world.cond:
                new, sent, done = c.lines[sent:], len(c.lines), c.exit_code is not None
                if not new and not done and not stop.is_set():
                    self.world.cond.wait(0.01)
            for line in new:
                cut = self.world.cut_stream_after.get(self.host)
                if cut is not None:
                    if cut == 0:
                        del self.world.cut_stream_after[self.host]
                        raise HostUnreachable("connection dropped", host=self.host)
                    self.world.cut_stream_after[self.host] = cut - 1
                on_line(line)
            if (done and not new) or stop.is_set():
                return

    def logs(self, name: str, *, since: str | None = None) -> list[LogLine]:
        c = self.containers.get(name)
        return list(c.lines) if c is not None else []

    def tail(self, name: str, n: int) -> Tail:
        return Tail(self.logs(name)[-n:], time.time())

    def stopped_processes(self, name: str) -> list[int]:
        c = self.containers.get(name)
        return list(c.script.stopped_pids) if c is not None and c.exit_code is None else []

    # -- the job's containers -------------------------------------------------------------

    def list_job(self, job: str) -> dict[str, ContainerState]:
        self._answer()
        return {name: ContainerState(name, name, "running" if c.exit_code is None else "exited",
                                     c.exit_code or 0, c.step.labels, "sha256:fake", "", "")
                for name, c in self.containers.items() if c.step.labels.get("q7x2.job") == job}

    def stop_job(self, job: str, *, grace_s: int = 10) -> list[str]:
        self._answer()
        stopped = [name for name, c in self.containers.items() if c.exit_code is None]
        for name in stopped:
            self.world.event("stop", name)
            self._end(self.containers[name], 137)
        return stopped

    def remove(self, names: Iterable[str]) -> None:
        for name in names:
            self.containers.pop(name, None)

    def remove_job(self, job: str, *, phase: str | None = None) -> int:
        gone = [n for n, c in self.containers.items() if phase is None or c.step.phase == phase]
        self.remove(gone)
        return len(gone)

    # -- the image (not scripted: these tests start from a delivered image) ---------------

    probe_image_script = "echo fake; echo '@rc 0'"

    def judge_image_probe(self, rc: int, lines: list[str]) -> ImageProbe:
        return ImageProbe(True, "sha256:fake", "")

    def image_id(self, ref: str) -> str | None:
        return "sha256:fake"

    def pull(self, ref: str) -> None:
        raise DeployError(f"{self.host}: the fake runtime has no registry")

    def load(self, archive: Iterable[bytes]) -> None:
        raise DeployError(f"{self.host}: the fake runtime loads no images")

    def remove_image(self, image_id: str) -> bool:
        return False
