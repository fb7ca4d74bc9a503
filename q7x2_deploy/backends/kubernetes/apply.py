"""Create, follow and delete a job's Kubernetes objects through the Kubernetes Python client.

`up`: refuse if the job's objects already exist, apply the ConfigMaps, run the prepare Job
(shared storage) to its end, then the training job; meanwhile print each pod's phase changes
and stream its containers' logs, each line prefixed with the pod's node and node rank; the
job's own status (AscendJob conditions, Volcano Job phase) decides the outcome. `down`
deletes everything the job created, whatever state it is in.

Not run against a live API server here (none runs on these machines): the tests drive this
code through a fake of the three client APIs it calls (CoreV1Api, BatchV1Api,
CustomObjectsApi), raising the client's own ApiException.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from urllib3.exceptions import HTTPError

from q7x2_deploy.backends.kubernetes.manifests import (
    ASCEND_CONTAINER,
    ASCENDJOB_API,
    VOLCANO_JOB_API,
    Manifests,
    prepare_job_name,
)
from q7x2_deploy.errors import DeployError
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.plan import LABEL_PREFIX
from q7x2_runtime.errors import UserError

POLL_S = 2.0
NOT_FOUND, CONFLICT = 404, 409


@dataclass
class Apis:
    """The three client APIs this module calls; `connect` makes the real ones."""

    core: Any  # kubernetes.client.CoreV1Api
    batch: Any  # kubernetes.client.BatchV1Api
    custom: Any  # kubernetes.client.CustomObjectsApi


def connect(kubeconfig: str | None) -> Apis:
    """Clients for the cluster of a kubeconfig (default: $KUBECONFIG, then ~/.kube/config)."""
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        raise UserError("the Kubernetes client is not installed: pip install 'q7x2-deploy[kubernetes]'") from None
    path = os.path.expanduser(kubeconfig) if kubeconfig else None
    if path is not None and not os.path.isfile(path):
        raise UserError(f"scheduler.kubernetes.kubeconfig: {kubeconfig} does not exist")
    try:
        api = config.new_client_from_config(config_file=path)
    except ConfigException as e:
        raise UserError(f"kubeconfig {path or '(default)'}: {str(e).splitlines()[0]}") from None
    return Apis(client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api))


def _status(e: BaseException) -> int | None:
    return getattr(e, "status", None)


def _is_api_error(e: BaseException) -> bool:
    return isinstance(getattr(e, "status", None), int) and hasattr(e, "reason")


def _reason(e: BaseException) -> str:
    return f"{getattr(e, 'status', '')} {getattr(e, 'reason', '') or ''}".strip() or type(e).__name__


def _custom_api(obj: dict[str, Any]) -> tuple[str, str, str]:
    return ASCENDJOB_API if obj["kind"] == "AscendJob" else VOLCANO_JOB_API


def _describe(obj: dict[str, Any]) -> str:
    kind = "Volcano Job" if obj["apiVersion"].startswith(VOLCANO_JOB_API[0]) else obj["kind"]
    return f"{kind} {obj['metadata']['name']}"


def _read(apis: Apis, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The object as the server has it, or None when it does not exist."""
    name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
    try:
        if obj["kind"] == "ConfigMap":
            return _as_dict(apis.core.read_namespaced_config_map(name, ns))
        if obj["apiVersion"] == "batch/v1":
            return _as_dict(apis.batch.read_namespaced_job(name, ns))
        group, version, plural = _custom_api(obj)
        return _as_dict(apis.custom.get_namespaced_custom_object(group, version, ns, plural, name))
    except Exception as e:
        if _status(e) == NOT_FOUND:
            return None
        raise


def _as_dict(value: Any) -> dict[str, Any]:
    """Typed client objects (ConfigMap, Job) and custom objects (plain dicts) alike."""
    if isinstance(value, dict):
        return value
    return value.to_dict()


def _create(apis: Apis, obj: dict[str, Any]) -> None:
    ns = obj["metadata"]["namespace"]
    if obj["kind"] == "ConfigMap":
        try:
            apis.core.create_namespaced_config_map(ns, obj)
        except Exception as e:
            if _status(e) != CONFLICT:
                raise
            # A ConfigMap left by an earlier run of the same job: this run's content wins.
            apis.core.replace_namespaced_config_map(obj["metadata"]["name"], ns, obj)
    elif obj["apiVersion"] == "batch/v1":
        apis.batch.create_namespaced_job(ns, obj)
    else:
        group, version, plural = _custom_api(obj)
        apis.custom.create_namespaced_custom_object(group, version, ns, plural, obj)


def _delete(apis: Apis, obj: dict[str, Any]) -> bool:
    """Delete one object and, in the background, what it owns (pods); False if it was gone."""
    name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
    try:
        if obj["kind"] == "ConfigMap":
            apis.core.delete_namespaced_config_map(name, ns)
        elif obj["apiVersion"] == "batch/v1":
            apis.batch.delete_namespaced_job(name, ns, propagation_policy="Background")
        else:
            group, version, plural = _custom_api(obj)
            apis.custom.delete_namespaced_custom_object(group, version, ns, plural, name, propagation_policy="Background")
    except Exception as e:
        if _status(e) == NOT_FOUND:
            return False
        raise
    return True


def _api_call(what: str, fn: Callable[[], Any]) -> Any:
    """One line for an API server that refuses or cannot be reached."""
    try:
        return fn()
    except UserError:
        raise
    except Exception as e:
        if _is_api_error(e):
            message = _server_message(e)
            raise DeployError(f"{what}: the API server answered {_reason(e)}{': ' + message if message else ''}") from None
        detail = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        if isinstance(e, (OSError, HTTPError)):
            raise DeployError(f"{what}: cannot reach the API server ({detail})") from None
        raise DeployError(f"{what}: the Kubernetes client refused it ({detail})") from None


def _server_message(e: BaseException) -> str:
    import json

    body = getattr(e, "body", None)
    if not body:
        return ""
    try:
        return str(json.loads(body).get("message", ""))[:300]
    except (ValueError, AttributeError):
        return ""


@dataclass
class PodView:
    """What `up` shows of one pod."""

    name: str
    node: str
    rank: str
    phase: str
    containers: list[str]  # init containers first, in order, then the main container
    exit_codes: dict[str, int] = field(default_factory=dict)


def _env_value(container: dict[str, Any], name: str) -> str | None:
    for e in container.get("env") or []:
        if e.get("name") == name and e.get("value") is not None:
            return str(e["value"])
    return None


def pod_view(pod: Any) -> PodView:
    """Node, node rank and phase of a pod. The rank is the RANK the operator put in the pod's
    spec (both operators add it as a plain value), else the prepare pod's 'prepare'."""
    p = _as_dict(pod)
    meta, spec, status = p.get("metadata") or {}, p.get("spec") or {}, p.get("status") or {}
    containers = spec.get("containers") or []
    main = next((c for c in containers if c.get("name") == ASCEND_CONTAINER), containers[0] if containers else {})
    rank = _env_value(main, "RANK")
    names = [c["name"] for c in spec.get("init_containers", spec.get("initContainers")) or []] + [c["name"] for c in containers]
    codes: dict[str, int] = {}
    for key in ("init_container_statuses", "initContainerStatuses", "container_statuses", "containerStatuses"):
        for cs in status.get(key) or []:
            term = ((cs.get("state") or {}).get("terminated")) or {}
            code = term.get("exit_code", term.get("exitCode"))
            if code is not None:
                codes[cs["name"]] = int(code)
    return PodView(
        name=meta.get("name", "?"),
        node=spec.get("node_name", spec.get("nodeName")) or "(unscheduled)",
        rank=rank if rank is not None else "prepare",
        phase=status.get("phase") or "Pending",
        containers=names,
        exit_codes=codes,
    )


def _rank_order(pod: PodView) -> tuple[int, str]:
    return (int(pod.rank) if pod.rank.isdigit() else -1, pod.name)


class _LogStreams:
    """One thread per pod streaming its containers' logs in order, each line prefixed."""

    def __init__(self, apis: Apis, namespace: str, sink: LogSink, *, follow: bool = True) -> None:
        self.apis, self.namespace, self.sink, self.follow = apis, namespace, sink, follow
        self._started: set[str] = set()
        self._threads: list[threading.Thread] = []

    def start(self, pod: PodView) -> None:
        if pod.name in self._started or pod.phase == "Pending":
            return
        self._started.add(pod.name)
        t = threading.Thread(target=self._follow, args=(pod,), name=f"logs-{pod.name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _follow(self, pod: PodView) -> None:
        for container in pod.containers:
            try:
                resp = self.apis.core.read_namespaced_pod_log(
                    pod.name, self.namespace, container=container, follow=self.follow, _preload_content=False
                )
                for line in _lines(resp):
                    self.sink.line(pod.node, pod.rank, line)
            except Exception as e:  # a pod deleted mid-stream, a container that never ran
                if _status(e) not in (NOT_FOUND, 400):
                    self.sink.note(f"logs of {pod.name}/{container} ended: {_reason(e)}")

    def join(self, timeout_s: float | None = 10.0) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _lines(resp: Any) -> Iterable[str]:
    """Lines of a streamed log response (urllib3's, or any iterable of byte chunks)."""
    chunks = resp.stream(4096) if hasattr(resp, "stream") else resp
    pending = b""
    for chunk in chunks:
        pending += chunk if isinstance(chunk, bytes) else str(chunk).encode()
        *done, pending = pending.split(b"\n")
        for raw in done:
            yield raw.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def training_outcome(obj: dict[str, Any] | None) -> str | None:
    """'succeeded', 'failed' or None (still running) from the job's own status."""
    if obj is None:
        return "failed"  # deleted under us
    status = obj.get("status") or {}
    if obj.get("kind") == "AscendJob":
        done = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        last = (status.get("conditions") or [{}])[-1]
        if last.get("status") == "True" and last.get("type") in ("Succeeded", "Failed"):
            return "succeeded" if last["type"] == "Succeeded" else "failed"
        if "Succeeded" in done:
            return "succeeded"
        return None
    phase = ((status.get("state") or {}).get("phase")) or ""
    if phase == "Completed":
        return "succeeded"
    if phase in ("Failed", "Aborted", "Terminated"):
        return "failed"
    return None


def prepare_outcome(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return "failed"
    status = obj.get("status") or {}
    if status.get("succeeded"):
        return "succeeded"
    if status.get("failed"):
        return "failed"
    return None


@dataclass
class Follower:
    """Polls one phase's pods and its job until the job's status says it is done."""

    apis: Apis
    manifests: Manifests
    sink: LogSink
    poll_s: float = POLL_S
    sleep: Callable[[float], None] = time.sleep
    _phases: dict[str, str] = field(default_factory=dict)

    def follow(self, phase: str, obj: dict[str, Any], outcome: Callable[[dict[str, Any] | None], str | None]) -> tuple[str, list[PodView]]:
        ns = self.manifests.target.namespace
        selector = f"{LABEL_PREFIX}.job={self.manifests.job_name},{LABEL_PREFIX}.phase={phase}"
        logs = _LogStreams(self.apis, ns, self.sink)
        pods: list[PodView] = []
        while True:
            listed = _api_call(f"listing the pods of {_describe(obj)}", lambda: self.apis.core.list_namespaced_pod(ns, label_selector=selector))
            items = _as_dict(listed).get("items") or []
            pods = sorted((pod_view(p) for p in items), key=_rank_order)
            for pod in pods:
                if self._phases.get(pod.name) != pod.phase:
                    self._phases[pod.name] = pod.phase
                    self.sink.note(f"pod {pod.name} (node rank {pod.rank}) on {pod.node}: {pod.phase}")
                logs.start(pod)
            state = outcome(_api_call(f"reading {_describe(obj)}", lambda: _read(self.apis, obj)))
            if state is not None:
                logs.join()
                return state, pods
            self.sleep(self.poll_s)


def _failure_line(what: str, pods: list[PodView]) -> str:
    failed = [p for p in pods if p.phase == "Failed" or any(c != 0 for c in p.exit_codes.values())]
    if not failed:
        return f"{what} failed; `kubectl describe` its pods for the reason"
    parts = []
    for p in failed:
        codes = ", ".join(f"{c} exited {code}" for c, code in p.exit_codes.items() if code != 0)
        parts.append(f"pod {p.name} on {p.node} (node rank {p.rank}){': ' + codes if codes else ''}")
    return f"{what} failed: " + "; ".join(parts)


def existing(apis: Apis, manifests: Manifests) -> list[str]:
    """The job's runnable objects (prepare Job, training job) already on the server."""
    wanted = [o for o in manifests.objects if o["kind"] != "ConfigMap"]
    return [_describe(o) for o in wanted if _api_call(f"reading {_describe(o)}", partial(_read, apis, o)) is not None]


def up(apis: Apis, manifests: Manifests, sink: LogSink, *, detach: bool = False, poll_s: float = POLL_S,
       sleep: Callable[[float], None] = time.sleep) -> int:
    """Apply and follow the job to its end; 0 when it succeeded. Raises DeployError on failure.
    `detach`: return once the training job is created (prepare still runs to its end first)."""
    ns = manifests.target.namespace
    present = existing(apis, manifests)
    if present:
        raise UserError(f"{', '.join(present)} already exist(s) in namespace {ns}: `q7x2-deploy down --scheduler kubernetes` removes the job first")
    follower = Follower(apis, manifests, sink, poll_s=poll_s, sleep=sleep)
    for obj in manifests.objects:
        if obj["kind"] == "ConfigMap":
            _api_call(f"creating {_describe(obj)}", partial(_create, apis, obj))
            sink.note(f"applied {_describe(obj)} in namespace {ns}")
    prepare = manifests.prepare
    if prepare is not None:
        _api_call(f"creating {_describe(prepare)}", lambda: _create(apis, prepare))
        sink.note(f"prepare: {_describe(prepare)} applied; training starts once it succeeds")
        state, pods = follower.follow("prepare", prepare, prepare_outcome)
        if state != "succeeded":
            raise DeployError(_failure_line(f"prepare ({_describe(prepare)})", pods) + "; training was not started")
        sink.note("prepare: succeeded")
    training = manifests.training
    _api_call(f"creating {_describe(training)}", lambda: _create(apis, training))
    sink.note(f"train: {_describe(training)} applied ({manifests.target.nnodes} node(s), queue {manifests.target.queue})")
    if detach:
        sink.note("detached: the cluster runs the job; `q7x2-deploy status|logs|down --scheduler kubernetes` see to it")
        return 0
    state, pods = follower.follow("train", training, training_outcome)
    if state != "succeeded":
        raise DeployError(_failure_line(f"training ({_describe(training)})", pods))
    sink.note(f"train: {_describe(training)} succeeded")
    return 0


def job_state(apis: Apis, manifests: Manifests) -> tuple[str, list[PodView]]:
    """'absent', 'running', 'succeeded' or 'failed', and the training pods."""
    training = manifests.training
    obj = _api_call(f"reading {_describe(training)}", lambda: _read(apis, training))
    if obj is None:
        return "absent", []
    ns = manifests.target.namespace
    selector = f"{LABEL_PREFIX}.job={manifests.job_name},{LABEL_PREFIX}.phase=train"
    listed = _api_call(f"listing the pods of {_describe(training)}", lambda: apis.core.list_namespaced_pod(ns, label_selector=selector))
    pods = sorted((pod_view(p) for p in _as_dict(listed).get("items") or []), key=_rank_order)
    return training_outcome(obj) or "running", pods


def stream_logs(apis: Apis, manifests: Manifests, sink: LogSink, *, follow: bool, nodes: Iterable[str] = ()) -> int:
    """Every training pod's logs (only those on `nodes`, if given), prefixed [node rank]; with
    `follow`, until each container ends. Returns how many pods were read."""
    ns = manifests.target.namespace
    selector = f"{LABEL_PREFIX}.job={manifests.job_name},{LABEL_PREFIX}.phase=train"
    listed = _api_call("listing the job's pods", lambda: apis.core.list_namespaced_pod(ns, label_selector=selector))
    pods = sorted((pod_view(p) for p in _as_dict(listed).get("items") or []), key=_rank_order)
    wanted = set(nodes)
    pods = [p for p in pods if not wanted or p.node in wanted]
    logs = _LogStreams(apis, ns, sink, follow=follow)
    for pod in pods:
        logs.start(pod)
    logs.join(timeout_s=None)
    return len(pods)


def down(apis: Apis, manifests: Manifests) -> list[str]:
    """Delete the job's objects, training job first (its pods stop), then prepare and the
    ConfigMaps. Returns what was deleted; deleting what is already gone is no error."""
    order = [manifests.training] + [o for o in manifests.objects[:-1] if o["kind"] != "ConfigMap"]
    order += [o for o in manifests.objects if o["kind"] == "ConfigMap"]
    deleted = []
    for obj in order:
        if _api_call(f"deleting {_describe(obj)}", partial(_delete, apis, obj)):
            deleted.append(_describe(obj))
    return deleted


__all__ = ["Apis", "Follower", "PodView", "connect", "down", "existing", "pod_view", "prepare_job_name", "training_outcome", "up"]
