"""The Docker CLI over a host's Transport: the only module that knows docker's commands,
flags and output formats (the `docker run` argv itself is part of the plan, built in plan.py).

Every command is an argv list run through the transport, so nothing reaches the remote shell
unquoted; the few that need a shell (one round trip for several facts) take their arguments
as positional parameters.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from q7x2_deploy.backends.container_runtime import (
    JOB_LABEL,
    PHASE_LABEL,
    ContainerState,
    ImageProbe,
    LogLine,
    Tail,
    WaitFailed,
)
from q7x2_deploy.errors import DeployError
from q7x2_deploy.plan import Mount, StepPlan
from q7x2_deploy.transport import CommandResult, Transport

# The container's last lines with the engine's timestamps, then the host's clock, so the age
# of the newest line needs no clock agreement with the operator's machine.
_TAIL_SCRIPT = 'docker logs --timestamps --tail "$1" "$2" 2>&1; echo "@now $(date +%s)"'

# Every process of the machine as `pid state ppid` after the container's init pid, in one round
# trip and with nothing but sh and coreutils (a host need not have procps).
PROC_SCRIPT = r"""
pid=$(docker inspect --format '{{.State.Pid}}' "$1" 2>/dev/null) || exit 0
echo "@root $pid"
for f in /proc/[0-9]*/stat; do
  read -r line < "$f" 2>/dev/null || continue
  p=${f#/proc/}; echo "${p%/stat} ${line##*) }"
done | cut -d' ' -f1-3
"""

# One docker CLI call answers both "does the engine answer?" and "is the image there?"
# (`docker info`, the obvious engine probe, is the slowest docker command).
_PROBE_IMAGE = """docker image inspect --format '{{.Id}}' "$img" 2>&1; echo "@rc $?\""""


def job_filter(job: str, phase: str | None = None) -> list[str]:
    return ["--filter", f"label={JOB_LABEL}={job}",
            *(["--filter", f"label={PHASE_LABEL}={phase}"] if phase is not None else [])]


def split_stamp(raw: str) -> LogLine:
    """`docker logs --timestamps` output: the RFC 3339 stamp, a space, the line."""
    stamp, sep, text = raw.partition(" ")
    if sep and len(stamp) > 20 and stamp[4] == "-" and stamp[10] == "T":
        return LogLine(stamp, text)
    return LogLine("", raw)


def split_tail(output: str) -> Tail:
    lines: list[LogLine] = []
    now: float | None = None
    for raw in output.splitlines():
        if raw.startswith("@now "):
            now = float(raw[5:])
        else:
            lines.append(split_stamp(raw))
    return Tail(lines, now)


def stopped_descendants(listing: str) -> list[int]:
    """The stopped (state T) pids under PROC_SCRIPT's @root, from its `pid state ppid` lines."""
    root = 0
    children: dict[int, list[int]] = {}
    state: dict[int, str] = {}
    for line in listing.splitlines():
        parts = line.split()
        if parts[:1] == ["@root"] and len(parts) == 2 and parts[1].isdigit():
            root = int(parts[1])
        elif len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
            pid, ppid = int(parts[0]), int(parts[2])
            state[pid] = parts[1]
            children.setdefault(ppid, []).append(pid)
    if not root:
        return []
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if state.get(pid, "").lower() == "t":
            found.append(pid)
        todo += children.get(pid, [])
    return sorted(found)


def parse_inspect(data: list[dict[str, Any]], job: str) -> dict[str, ContainerState]:
    """`docker inspect` of containers -> their states by name (only `job`'s)."""
    out: dict[str, ContainerState] = {}
    for c in data:
        labels = (c.get("Config") or {}).get("Labels") or {}
        if labels.get(JOB_LABEL) != job:  # belt and braces: the filter already did this
            continue
        st = c.get("State") or {}
        name = c.get("Name", "").lstrip("/")
        out[name] = ContainerState(
            name=name,
            id=c.get("Id", ""),
            status=st.get("Status", "unknown"),
            exit_code=int(st.get("ExitCode", 0)),
            labels=labels,
            image_id=c.get("Image", ""),
            started_at=st.get("StartedAt", ""),
            finished_at=st.get("FinishedAt", ""),
        )
    return out


def run_once_argv(image: str, command: Sequence[str], *, env: Mapping[str, str], mounts: Iterable[Mount],
                  labels: Mapping[str, str]) -> list[str]:
    """`docker run --rm` with no network and no devices."""
    argv = ["docker", "run", "--rm", "--network", "none"]
    argv += [x for k, v in labels.items() for x in ("--label", f"{k}={v}")]
    argv += [x for k, v in env.items() for x in ("-e", f"{k}={v}")]
    argv += [x for m in mounts for x in ("-v", m.option())]
    return [*argv, image, *command]


class DockerCLI:
    """ContainerRuntime for a host whose Docker engine the SSH user may drive."""

    probe_image_script = _PROBE_IMAGE

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.host = transport.host

    # -- a step's container -------------------------------------------------------------

    def start(self, step: StepPlan) -> None:
        self.t.check(step.docker_run, timeout=300)

    def run_once(self, image: str, command: Sequence[str], *, env: Mapping[str, str], mounts: Iterable[Mount],
                 labels: Mapping[str, str], timeout_s: float) -> CommandResult:
        return self.t.run(run_once_argv(image, command, env=env, mounts=mounts, labels=labels), timeout=timeout_s)

    def wait(self, name: str, *, stop: threading.Event) -> int | None:
        out: list[str] = []
        rc = self.t.stream(["docker", "wait", name], out.append, stop=stop)
        if rc == -1 and stop.is_set():
            return None
        code = next((int(s) for s in out if s.strip().lstrip("-").isdigit()), None)
        if rc != 0 or code is None:
            raise WaitFailed(f"`docker wait {name}` failed: {' '.join(out)[-200:]}")
        return code

    def follow(self, name: str, on_line: Callable[[LogLine], None], *, stop: threading.Event,
               since: str | None = None, tail: int | None = None) -> None:
        # -f on an exited container prints what it wrote and returns.
        argv = ["docker", "logs", "--timestamps", *(["--since", since] if since else []),
                *(["--tail", str(tail)] if tail is not None else []), "-f", name]
        self.t.stream(argv, lambda raw: on_line(split_stamp(raw)), stop=stop)

    def logs(self, name: str, *, since: str | None = None) -> list[LogLine]:
        r = self.t.run(["docker", "logs", "--timestamps", *(["--since", since] if since else []), name], timeout=600)
        if not r.ok:
            if "No such container" in r.stderr:
                return []
            raise DeployError(f"`docker logs {name}` failed: {r.last_lines(1)}", host=self.host)
        # stdout and stderr arrive separately; the timestamps put them back in order.
        raw = r.stdout.splitlines() + r.stderr.splitlines()
        return sorted((split_stamp(x) for x in raw), key=lambda ln: ln.stamp)

    def tail(self, name: str, n: int) -> Tail:
        # The exit status is not checked: a container removed meanwhile gives an empty tail
        # (its error line has no stamp), which status shows as no progress.
        r = self.t.run(["sh", "-c", _TAIL_SCRIPT, "sh", str(n), name], timeout=60)
        return split_tail(r.stdout)

    def stopped_processes(self, name: str) -> list[int]:
        return stopped_descendants(self.t.run(["sh", "-c", PROC_SCRIPT, "sh", name], timeout=30).stdout)

    # -- the job's containers -----------------------------------------------------------

    def _ids(self, *args: str) -> list[str]:
        return self.t.check(["docker", "ps", *args], timeout=60).stdout.split()

    def list_job(self, job: str) -> dict[str, ContainerState]:
        ids = self._ids("-aq", "--no-trunc", *job_filter(job))
        if not ids:
            return {}
        return parse_inspect(json.loads(self.t.check(["docker", "inspect", *ids], timeout=60).stdout), job)

    def stop_job(self, job: str, *, grace_s: int = 10) -> list[str]:
        ids = self._ids("-q", *job_filter(job))
        if ids:
            # Not checked: a container that exits on its own between `ps` and `stop` makes
            # `docker stop` fail for it, and that container is stopped all the same.
            self.t.run(["docker", "stop", "-t", str(grace_s), *ids], timeout=grace_s + 60)
        return ids

    def remove(self, names: Iterable[str]) -> None:
        names = list(names)
        if names:
            self.t.check(["docker", "rm", "-f", *names], timeout=120)

    def remove_job(self, job: str, *, phase: str | None = None) -> int:
        ids = self._ids("-aq", *job_filter(job, phase))
        self.remove(ids)
        return len(ids)

    # -- the image ----------------------------------------------------------------------

    def judge_image_probe(self, rc: int, lines: list[str]) -> ImageProbe:
        answer = " ".join(lines)
        if rc == 0 and lines:
            return ImageProbe(True, lines[0].strip(), "")
        if "No such image" in answer or "no such image" in answer:
            return ImageProbe(True, None, "")
        return ImageProbe(False, None, answer[-200:])

    def image_id(self, ref: str) -> str | None:
        r = self.t.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], timeout=60)
        return r.stdout.strip() if r.ok and r.stdout.strip() else None

    def pull(self, ref: str) -> None:
        r = self.t.run(["docker", "pull", "--quiet", ref], timeout=3600)
        if not r.ok:
            raise DeployError(f"`docker pull {ref}` failed: {r.last_lines(1)} "
                              "(is the registry reachable from the host and logged in there?)", host=self.host)

    def load(self, archive: Iterable[bytes]) -> None:
        r = self.t.run(["docker", "load"], stdin=archive, timeout=None)
        if not r.ok:
            raise DeployError(f"`docker load` failed: {r.last_lines(1)}", host=self.host)

    def remove_image(self, image_id: str) -> bool:
        # No force: refused while a container (even a stopped one) or another tag uses it.
        return self.t.run(["docker", "image", "rm", image_id], timeout=300).ok
