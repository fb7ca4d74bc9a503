"""Run a phase's steps as containers and watch them; the first failure stops the job everywhere.

Each watched container has two SSH commands on its host: `docker logs -f` (its lines go to the
merged output) and `docker wait` (its exit status). A heartbeat per host notices a host that
stops answering even when no command would ever return an error on its own. A job whose hosts
all answer but none prints anything for a long time is the other silent failure (a rank stuck
in a collective waits for HCCL_EXEC_TIMEOUT, 1836 s by default, forever at 0): the deployer says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.containers import ContainerState, remove_containers, stop_job
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.output import LogSink
from q7x2_deploy.executor.status import quiet_for
from q7x2_deploy.plan import HostPlan, StepPlan
from q7x2_deploy.transport import HostUnreachable

# A lost host is noticed within about INTERVAL + MISSES * TIMEOUT seconds. The timeout is
# generous enough for sshd on a host whose CPUs are all busy training.
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TIMEOUT_S = 6.0
HEARTBEAT_MISSES = 2  # consecutive misses before a host counts as lost
# Long enough for a 7B checkpoint save or a slow conversion shard, short enough to matter.
QUIET_WARNING_S = 600.0


class JobFailed(DeployError):
    """A step failed or a host was lost; the job has been stopped on every host."""


@dataclass(frozen=True)
class Failure:
    host: str
    rank: int
    step: str
    reason: str
    lost: bool = False  # the host itself stopped answering (not just its container)


class Supervisor:
    def __init__(self, cluster: Cluster, sink: LogSink, *, quiet_warning_s: float = QUIET_WARNING_S) -> None:
        self.cluster = cluster
        self.sink = sink
        self.quiet_warning_s = quiet_warning_s
        self.stop = threading.Event()
        self.failure: Failure | None = None
        self._lock = threading.Lock()
        self._current_step: dict[str, str] = {}  # host -> the step it is running, for messages
        self._runners: list[threading.Thread] = []

    # -- failure ----------------------------------------------------------------------

    def fail(self, host: HostPlan, step: str, reason: str, *, lost: bool = False) -> None:
        with self._lock:
            if self.failure is None and not self.stop.is_set():
                self.failure = Failure(host.name, host.node_rank, step, reason, lost)
            self.stop.set()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait for hosts still in the middle of `docker run`: a container created after the
        stop would otherwise outlive the job. Watchers return at once once `stop` is set."""
        deadline = time.monotonic() + timeout
        for th in self._runners:
            th.join(max(0.0, deadline - time.monotonic()))

    def stop_everywhere(self, skip: frozenset[str] = frozenset()) -> dict[str, str]:
        """Stop the job's running containers on every host that answers; returns errors by host."""
        self.stop.set()
        self.settle()
        job = self.cluster.plan.job_name
        hosts = [h for h in self.cluster.hosts if h.name not in skip]
        outcomes = for_each(hosts, lambda h: stop_job(self.cluster.transport(h), job), key=lambda h: h.name)
        errors = {name: str(o.error) for name, o in outcomes.items() if o.error is not None}
        errors.update({name: "not answering" for name in skip})
        return errors

    def raise_failure(self) -> None:
        f = self.failure
        assert f is not None
        self.sink.note(f"q7x2-deploy: {f.host} (rank {f.rank}) failed in {f.step}: {f.reason}")
        tail = self.sink.tail(f.host, 10)
        if tail:
            self.sink.note(f"q7x2-deploy: last lines from {f.host}:")
            for line in tail:
                self.sink.note(f"  [{f.host} {f.rank}] {line}")
        # A host that stopped answering would only make us wait for its timeouts.
        unreachable = self.stop_everywhere(frozenset({f.host}) if f.lost else frozenset())
        stopped = [h.name for h in self.cluster.hosts if h.name not in unreachable]
        self.sink.note(f"q7x2-deploy: job {self.cluster.plan.job_name} stopped on {', '.join(stopped) or 'no host'}"
                       + (f"; could not reach {', '.join(unreachable)}" if unreachable else ""))
        raise JobFailed(f"{f.host} (rank {f.rank}) failed in {f.step}: {f.reason}")

    # -- heartbeat --------------------------------------------------------------------

    def _heartbeat(self, host: HostPlan, done: threading.Event) -> None:
        t = self.cluster.transport(host)
        misses = 0
        while not done.wait(HEARTBEAT_INTERVAL_S) and not self.stop.is_set():
            try:
                t.ping(timeout=HEARTBEAT_TIMEOUT_S)
                misses = 0
            except DeployError:
                misses += 1
                if misses >= HEARTBEAT_MISSES:
                    step = self._current_step.get(host.name, "its phase")
                    self.fail(host, step, f"host stopped answering (no SSH reply within "
                              f"{HEARTBEAT_TIMEOUT_S:.0f}s, {misses} times in a row)", lost=True)
                    return

    # -- one container ----------------------------------------------------------------

    def _watch(self, host: HostPlan, step: StepPlan, *, attached_late: bool) -> None:
        t = self.cluster.transport(host)
        name = step.container_name

        def _emit(line: str) -> None:
            self.sink.line(host.name, host.node_rank, line)

        logs_argv = ["docker", "logs", "-f", *(["--tail", "20"] if attached_late else []), name]
        follower = threading.Thread(target=self._follow, args=(host, logs_argv, _emit), daemon=True)
        follower.start()
        status_lines: list[str] = []
        try:
            rc = t.stream(["docker", "wait", name], status_lines.append, stop=self.stop)
        except HostUnreachable as e:
            self.fail(host, step.name, f"host stopped answering ({str(e).removeprefix(host.name + ': ')})",
                      lost=True)
            return
        except DeployError as e:
            self.fail(host, step.name, str(e))
            return
        if rc == -1 and self.stop.is_set():
            return  # another host failed; we are being stopped
        follower.join(timeout=10)  # let the last lines arrive before judging
        code = next((int(s) for s in status_lines if s.strip().lstrip("-").isdigit()), None)
        if rc != 0 or code is None:
            self.fail(host, step.name, f"`docker wait {name}` failed: {' '.join(status_lines)[-200:]}")
        elif code != 0:
            self.fail(host, step.name, f"container {name} exited with status {code}")
        else:
            self.sink.note(f"q7x2-deploy: {host.name}: {step.name} finished")

    def _follow(self, host: HostPlan, argv: list[str], emit: Callable[[str], None]) -> None:
        try:
            self.cluster.transport(host).stream(argv, emit, stop=self.stop)
        except DeployError:
            pass  # `docker wait` and the heartbeat report a lost host; logs are best effort

    # -- a host's steps in one phase --------------------------------------------------

    def _run_host(self, host: HostPlan, steps: list[StepPlan], existing: dict[str, ContainerState],
                  watch: bool) -> None:
        t = self.cluster.transport(host)
        for step in steps:
            if self.stop.is_set():
                return
            self._current_step[host.name] = step.name
            state = existing.get(step.container_name)
            if state is not None and state.succeeded:
                self.sink.note(f"q7x2-deploy: {host.name}: {step.name} already done, skipped")
                continue
            attached_late = state is not None and state.running
            if not attached_late:
                try:
                    if state is not None:  # a failed or stopped earlier attempt
                        remove_containers(t, [step.container_name])
                    t.check(step.docker_run, timeout=300)
                except DeployError as e:
                    self.fail(host, step.name, f"could not start container: {str(e).removeprefix(host.name + ': ')}")
                    return
                self.sink.note(f"q7x2-deploy: {host.name}: {step.name} started ({step.container_name})")
            if watch:
                self._watch(host, step, attached_late=attached_late)

    def run_phase(self, phase: str, existing: dict[str, dict[str, ContainerState]], *, watch: bool = True) -> None:
        """Run every host's steps of `phase`; returns when all finished (or, unwatched, started).

        Raises JobFailed after stopping the job everywhere if any host failed.
        """
        work = [(h, [s for s in h.steps if s.phase == phase]) for h in self.cluster.hosts]
        work = [(h, steps) for h, steps in work if steps]
        if not work:
            return
        done = threading.Event()
        beats = [threading.Thread(target=self._heartbeat, args=(h, done), daemon=True)
                 for h in self.cluster.hosts]
        runners = [threading.Thread(target=self._run_host, args=(h, steps, existing.get(h.name, {}), watch),
                                    daemon=True) for h, steps in work]
        self._runners = runners
        for th in beats + runners:
            th.start()
        watch_quiet = _QuietWatch(self.sink, phase, self.quiet_warning_s)
        try:
            for th in runners:
                while th.is_alive():  # short joins keep Ctrl-C deliverable to the main thread
                    th.join(0.5)
                    if self.stop.is_set():
                        break
                    if watch:
                        watch_quiet.check()
                if self.stop.is_set():
                    break
        finally:
            done.set()
        if self.failure is not None:
            self.raise_failure()


class _QuietWatch:
    """Says when no host has printed a line for `every` seconds, and again each `every` after."""

    def __init__(self, sink: LogSink, phase: str, every: float) -> None:
        self.sink, self.phase, self.every = sink, phase, every
        self.since = time.monotonic()  # lines from before this phase do not count
        self.next_warning = every

    def check(self) -> None:
        quiet = time.monotonic() - max(self.sink.last_line_at, self.since)
        if quiet < self.every:
            self.next_warning = self.every
        elif quiet >= self.next_warning:
            self.sink.note(f"q7x2-deploy: no output from any host for {quiet_for(quiet)} in phase {self.phase}, "
                           "though every host answers; a rank stuck in a collective looks like this "
                           "(`q7x2-deploy status` shows how long each host has been quiet)")
            self.next_warning += self.every
