"""Run a phase's steps as containers and watch them; the first failure stops the job everywhere.

Each watched container has two commands on its host's container runtime: follow its output
(the lines go to the merged output) and wait for its exit status. A heartbeat per host notices a host that
stops answering even when no command would ever return an error on its own. A job whose hosts
all answer but none prints anything for a long time is the other silent failure (a rank stuck
in a collective waits for HCCL_EXEC_TIMEOUT, 1836 s by default, forever at 0): the deployer says so,
and in the train phase, after `hang_timeout` without an iteration line, treats it as a failure.
The hang clock starts at the attempt's first iteration line: until then the run is starting
(imports, waiting for the master, agreeing on the start point, the rendezvous, loading the
checkpoint), whose waits for peers the runtime bounds itself by `cluster.connect_timeout_s`; the
start-up counts as a hang only after that bound plus `hang_timeout` without an iteration line.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from q7x2_deploy.backends.container_runtime import ContainerState, LogLine, WaitFailed
from q7x2_deploy.errors import DeployError, reason_for
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.failure_record import diagnose_attempt, write_result
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.metrics import parse_line
from q7x2_deploy.executor.peer_replication import Mirror
from q7x2_deploy.runs.output import LogSink
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


# Where a (re)started run resumes, as the runtime says it: each node's "start point: resume
# from DIR at iteration N" / "start point: first start ...", and Megatron's (and the CPU
# trainer's) "successfully loaded checkpoint from DIR [ t 0, p 0 ] at iteration N".
_RESUMED = re.compile(r"(?:start point: resume from|successfully loaded checkpoint from).*\biteration (\d+)")
_FIRST_START = "start point: first start"

# (resume iteration or None, first iteration printed, wall time): the run trains again.
OnTraining = Callable[[int | None, int, float], None]


class JobFailed(DeployError):
    """A step failed or a host was lost; the job has been stopped on every host."""


@dataclass(frozen=True)
class Failure:
    host: str
    rank: int
    step: str
    reason: str
    lost: bool = False  # the host itself stopped answering (not just its container)
    kind: str = "exit"  # exit | lost | hang | start (recovery.IncidentKind)
    exit_code: int | None = None
    detected_at: float = 0.0  # wall clock
    healthy_until: float | None = None  # the host's last heartbeat reply or line (wall clock)


class Supervisor:
    def __init__(self, cluster: Cluster, sink: LogSink, *, quiet_warning_s: float = QUIET_WARNING_S,
                 hang_timeout_s: float | None = None, startup_wait_s: float | None = None,
                 on_training: OnTraining | None = None) -> None:
        self.cluster = cluster
        self.sink = sink
        self.quiet_warning_s = quiet_warning_s
        self.hang_timeout_s = hang_timeout_s
        self._startup_wait_s = startup_wait_s
        self.on_training = on_training
        self.stop = threading.Event()
        # Progress, for hang detection and recovery events (wall clock, written by watchers).
        self.last_reply: dict[str, float] = {}  # host -> its last heartbeat reply
        self.last_line: dict[str, float] = {}  # host -> its last log line
        self.last_iteration: int | None = None
        self.last_iteration_at: float | None = None
        self.resume_iteration: int | None = None
        self._trained = False
        self.failure: Failure | None = None
        self._lock = threading.Lock()
        self._current_step: dict[str, str] = {}  # host -> the step it is running, for messages
        self._runners: list[threading.Thread] = []

    # -- failure ----------------------------------------------------------------------

    def fail(self, host: HostPlan, step: str, reason: str, *, lost: bool = False, kind: str | None = None,
             exit_code: int | None = None) -> None:
        with self._lock:
            if self.failure is None and not self.stop.is_set():
                seen = [t for t in (self.last_reply.get(host.name), self.last_line.get(host.name)) if t]
                self.failure = Failure(host.name, host.node_rank, step, reason, lost,
                                       kind or ("lost" if lost else "exit"), exit_code, time.time(),
                                       max(seen) if seen else None)
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
        outcomes = for_each(hosts, lambda h: self.cluster.runtime(h).stop_job(job), key=lambda h: h.name)
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
        self.sink.flush()
        diagnosis = diagnose_attempt(self.cluster.plan, failed_host=f.host, lost=[f.host] if f.lost else [])
        self.sink.note(f"q7x2-deploy: {diagnosis.headline()}")
        for line in diagnosis.evidence:
            self.sink.note(f"  {line}")
        write_result(self.cluster.plan.job_name, "failed", failure=asdict(f), diagnosis=diagnosis.to_dict())
        raise JobFailed(f"{f.host} (rank {f.rank}) failed in {f.step}: {f.reason}")

    # -- heartbeat --------------------------------------------------------------------

    def _heartbeat(self, host: HostPlan, done: threading.Event) -> None:
        t = self.cluster.transport(host)
        misses = 0
        while not done.wait(HEARTBEAT_INTERVAL_S) and not self.stop.is_set():
            try:
                t.ping(timeout=HEARTBEAT_TIMEOUT_S)
                self.last_reply[host.name] = time.time()
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
        rt = self.cluster.runtime(host)
        name = step.container_name

        def _emit(line: LogLine) -> None:
            self._progress(host, line.text)
            self.sink.line(host.name, host.node_rank, line.text)

        follower = threading.Thread(target=self._follow, args=(host, name, 20 if attached_late else None, _emit),
                                    daemon=True)
        follower.start()
        try:
            code = rt.wait(name, stop=self.stop)
        except HostUnreachable as e:
            self.fail(host, step.name, f"host stopped answering ({reason_for(e, host.name)})",
                      lost=True)
            return
        except WaitFailed as e:
            follower.join(timeout=10)  # let the last lines arrive before judging
            self.fail(host, step.name, str(e))
            return
        except DeployError as e:
            self.fail(host, step.name, str(e))
            return
        if code is None:
            return  # another host failed; we are being stopped
        follower.join(timeout=10)  # let the last lines arrive before judging
        if code != 0:
            self.fail(host, step.name, f"container {name} exited with status {code}", exit_code=code)
        else:
            self.sink.note(f"q7x2-deploy: {host.name}: {step.name} finished")

    def _progress(self, host: HostPlan, line: str) -> None:
        now = time.time()
        self.last_line[host.name] = now
        if (m := _RESUMED.search(line)) is not None:
            self.resume_iteration = int(m.group(1))
            return
        if _FIRST_START in line:
            self.resume_iteration = 0
            return
        p = parse_line(line)
        if p is None:
            return
        self.last_iteration, self.last_iteration_at = p.iteration, now
        if not self._trained:
            self._trained = True
            if self.on_training is not None:
                self.on_training(self.resume_iteration, p.iteration, now)

    @property
    def startup_wait_s(self) -> float:
        """How long the runtime may wait for its peers while starting before it gives up on its
        own: the job's cluster.connect_timeout_s, unless given."""
        if self._startup_wait_s is not None:
            return self._startup_wait_s
        return float(self.cluster.plan.job_spec.cluster.connect_timeout_s)

    def _check_hang(self, since: float) -> None:
        """No iteration line for hang_timeout while every host answers (the heartbeats say
        so, or they would have failed the job first): a rank stopped, the others wait for it.
        Before the attempt's first iteration line the bound is startup_wait_s + hang_timeout."""
        if self.hang_timeout_s is None or self.stop.is_set():
            return
        now = time.time()
        if self.last_iteration_at is None:
            # Still starting: a start-up slower than an iteration (a busy machine, a big
            # checkpoint to load) is not a hang; its own waits are bounded by the runtime.
            quiet = now - since
            if quiet < self.startup_wait_s + self.hang_timeout_s:
                return
            what = f"no iteration line {quiet_for(quiet)} after the train phase started"
        else:
            quiet = now - self.last_iteration_at
            if quiet < self.hang_timeout_s:
                return
            what = f"no iteration line for {quiet_for(quiet)}"
        host, why = self._stuck_host()
        step = self._current_step.get(host.name, "pretrain")
        self.fail(host, step, f"{what} while every host answers; {why}", kind="hang")

    def _stuck_host(self) -> tuple[HostPlan, str]:
        """The host whose process made no progress (a stopped process), else the host whose
        last line is the oldest (the others went on a little before blocking)."""
        hosts = self.cluster.hosts
        def _stopped(h: HostPlan) -> list[int]:
            name = _train_container(h)
            return self.cluster.runtime(h).stopped_processes(name) if name is not None else []

        outcomes = for_each(hosts, _stopped, key=lambda h: h.name)
        for h in hosts:
            o = outcomes[h.name]
            if o.value:
                return h, f"a process of {h.name}'s container is stopped (pid {', '.join(map(str, o.value))})"
        oldest = min(hosts, key=lambda h: self.last_line.get(h.name, 0.0))
        return oldest, f"{oldest.name} printed its last line longest ago"

    def _follow(self, host: HostPlan, name: str, tail: int | None, emit: Callable[[LogLine], None]) -> None:
        try:
            self.cluster.runtime(host).follow(name, emit, stop=self.stop, tail=tail)
        except DeployError:
            pass  # the wait and the heartbeat report a lost host; logs are best effort

    # -- a host's steps in one phase --------------------------------------------------

    def _run_host(self, host: HostPlan, steps: list[StepPlan], existing: dict[str, ContainerState],
                  watch: bool) -> None:
        rt = self.cluster.runtime(host)
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
                        rt.remove([step.container_name])
                    rt.start(step)
                except HostUnreachable as e:  # a lost host, not a step that cannot start
                    self.fail(host, step.name, f"host stopped answering ({reason_for(e, host.name)})",
                              lost=True)
                    return
                except DeployError as e:
                    self.fail(host, step.name, f"could not start container: {reason_for(e, host.name)}",
                              kind="start")
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
        # Per-node storage without a replica path: the stores are brought up to date before any
        # container starts (a spare or a wiped host restores), then kept copied to the next host.
        mirror = Mirror.for_cluster(self.cluster, self.sink.note) if phase == "train" else None
        if mirror is not None:
            mirror.try_restore()
            if watch:
                mirror.start()
        for th in beats + runners:
            th.start()
        watch_quiet = _QuietWatch(self.sink, phase, self.quiet_warning_s)
        since = time.time()
        try:
            for th in runners:
                while th.is_alive():  # short joins keep Ctrl-C deliverable to the main thread
                    th.join(0.5)
                    if self.stop.is_set():
                        break
                    if watch:
                        watch_quiet.check()
                        if phase == "train":
                            self._check_hang(since)
                if self.stop.is_set():
                    break
        finally:
            done.set()
            if mirror is not None:
                mirror.stop(final_pass=watch and self.failure is None)
        if self.failure is not None:
            self.raise_failure()


def _train_container(host: HostPlan) -> str | None:
    return next((s.container_name for s in host.steps if s.phase == "train"), None)


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
