"""The container-runtime interface: what the executor needs from one host's container engine.

The executor orchestrates (phases as barriers, heartbeats, fail-fast, recovery); everything it
asks of the engine goes through these methods, so another runtime (a Slurm or Kubernetes
backend, a fake for unit tests) plugs in by implementing them. Containers are named by the plan
(`StepPlan.container_name`) and carry its labels; a job's containers are found by the job label.

Errors: every method raises DeployError (naming the host) when the engine cannot be asked,
and HostUnreachable (a DeployError) when the host itself stopped answering.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from q7x2_deploy.errors import DeployError
from q7x2_deploy.plan import LABEL_PREFIX, Mount, StepPlan
from q7x2_deploy.transport import CommandResult, Transport

JOB_LABEL = f"{LABEL_PREFIX}.job"
PHASE_LABEL = f"{LABEL_PREFIX}.phase"
STEP_LABEL = f"{LABEL_PREFIX}.step"


class WaitFailed(DeployError):
    """Waiting for a container ran but gave no exit status (the container vanished, the engine
    refused): the step counts as failed, not the host as lost."""


@dataclass(frozen=True)
class ContainerState:
    name: str
    id: str
    status: str  # created | running | exited | dead | ...
    exit_code: int
    labels: dict[str, str]
    image_id: str
    started_at: str
    finished_at: str

    @property
    def step(self) -> str:
        return self.labels.get(STEP_LABEL, "?")

    @property
    def phase(self) -> str:
        return self.labels.get(PHASE_LABEL, "?")

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting", "created")

    @property
    def succeeded(self) -> bool:
        return self.status == "exited" and self.exit_code == 0


@dataclass(frozen=True)
class LogLine:
    stamp: str  # RFC 3339 with nanoseconds as the engine wrote it, sorts as text; "" if none
    text: str


@dataclass(frozen=True)
class Tail:
    lines: list[LogLine]
    host_now: float | None  # the host's clock (epoch seconds) when the tail was read


@dataclass(frozen=True)
class ImageProbe:
    """What the preflight's one round trip learned about the engine and the image."""

    engine_ok: bool
    image_id: str | None  # None: not present (engine_ok) or unknown (engine down)
    detail: str  # the engine's answer when it is down


class ContainerRuntime(Protocol):
    """One host's container engine. Implementations must be safe to use from several threads."""

    host: str

    # -- a step's container -------------------------------------------------------------

    def start(self, step: StepPlan) -> None:
        """Create and start the step's container detached (named and labeled as the plan says)."""

    def run_once(self, image: str, command: Sequence[str], *, env: Mapping[str, str], mounts: Iterable[Mount],
                 labels: Mapping[str, str], timeout_s: float) -> CommandResult:
        """Run `command` in a throwaway container of `image` (removed when it ends) with no
        network and no devices, and return its exit status and output."""

    def wait(self, name: str, *, stop: threading.Event) -> int | None:
        """Block until the container exits: its exit status, or None when `stop` was set first.
        Raises WaitFailed when the wait ran but gave no status, HostUnreachable when the host
        stopped answering."""

    def follow(self, name: str, on_line: Callable[[LogLine], None], *, stop: threading.Event,
               since: str | None = None, tail: int | None = None) -> None:
        """Hand every line the container wrote (after `since`, or its last `tail`) to on_line, and
        each new one until it exits or `stop` is set. Returns when either happens; the caller
        decides whether a broken stream matters (`stop.is_set()` tells an abandoned one)."""

    def logs(self, name: str, *, since: str | None = None) -> list[LogLine]:
        """Everything the container wrote so far (after `since`) in time order; [] if it is gone."""

    def tail(self, name: str, n: int) -> Tail:
        """The container's last n lines and the host's clock, read in one round trip."""

    def stopped_processes(self, name: str) -> list[int]:
        """Pids of the container's processes that are stopped (SIGSTOP, a debugger); [] if gone."""

    # -- the job's containers -----------------------------------------------------------

    def list_job(self, job: str) -> dict[str, ContainerState]:
        """Every container of `job` on this host (running or not) by name, and no other."""

    def stop_job(self, job: str, *, grace_s: int = 10) -> list[str]:
        """Stop the job's running containers, kept for their logs; returns their ids."""

    def remove(self, names: Iterable[str]) -> None:
        """Remove these containers, running or not."""

    def remove_job(self, job: str, *, phase: str | None = None) -> int:
        """Remove every container of `job` (of one phase, if given); returns how many. Idempotent."""

    # -- the image ----------------------------------------------------------------------

    probe_image_script: str
    """A POSIX sh fragment, run inside the preflight's one round trip with the image reference
    in $img, printing the engine's answer about it followed by `@rc N`."""

    def judge_image_probe(self, rc: int, lines: list[str]) -> ImageProbe:
        """Read what probe_image_script printed."""

    def image_id(self, ref: str) -> str | None:
        """The ID of the image `ref` names on this host, None when it has none."""

    def pull(self, ref: str) -> None:
        """Fetch `ref` from its registry."""

    def load(self, archive: Iterable[bytes]) -> None:
        """Load an image archive (`docker save` format) streamed in chunks."""

    def remove_image(self, image_id: str) -> bool:
        """Remove an image unless a container or another tag uses it; whether it went."""


# How a Cluster gets each host's runtime from its transport.
RuntimeFactory = Callable[[Transport], ContainerRuntime]
