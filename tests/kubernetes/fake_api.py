"""A fake of the three Kubernetes client APIs the apply path calls, for unit tests only.

It stands exactly at the client boundary: the same method names and arguments as
kubernetes.client's CoreV1Api, BatchV1Api and CustomObjectsApi, answers typed as the client's
own models (V1ConfigMap, V1Job, V1PodList; custom objects as dicts, as the client returns
them), errors as the client's ApiException. Behind it, a scripted operator: each phase
(prepare, train) has a list of states, one per poll of its pods, each giving the pods (made
from the submitted pod templates, with the node and the RANK the real operators add) and the
job's status. No API server can run on these machines, so this is all the apply path meets here.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException


def api_error(status: int, reason: str, message: str = "") -> ApiException:
    return ApiException(status=status, reason=reason, body=json.dumps({"kind": "Status", "message": message}) if message else None)


@dataclass
class PodState:
    node: str
    rank: str | None  # None: the prepare pod (no operator RANK)
    role: str  # template to take: prepare | master | worker
    phase: str
    exit_codes: dict[str, int] = field(default_factory=dict)


@dataclass
class Tick:
    pods: list[PodState]
    status: dict[str, Any]  # the job's status at this poll


class LogResponse:
    """What read_namespaced_pod_log(..., _preload_content=False) returns: urllib3's response,
    read with .stream(); the chunks deliberately cut lines apart."""

    def __init__(self, lines: list[str]) -> None:
        self.data = "".join(line + "\n" for line in lines).encode()

    def stream(self, amt: int = 4096):
        for i in range(0, len(self.data), 7):
            yield self.data[i : i + 7]


class FakeServer:
    def __init__(self, script: dict[str, list[Tick]] | None = None, logs: dict[tuple[str, str], list[str]] | None = None) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (collection, namespace, name) -> JSON
        self.calls: list[tuple[str, str, str]] = []  # (verb, collection, name)
        self.script = script or {}
        self.logs = logs or {}
        self.ticks: dict[str, int] = {}
        self.fail: dict[tuple[str, str], BaseException] = {}  # (verb, collection) -> raised instead
        self.deletes: list[tuple[str, str, str | None]] = []  # (collection, name, propagation)
        self.core = _Core(self)
        self.batch = _Batch(self)
        self.custom = _Custom(self)

    # -- storage ------------------------------------------------------------------------------

    def _call(self, verb: str, collection: str, name: str) -> None:
        self.calls.append((verb, collection, name))
        if (verb, collection) in self.fail:
            raise self.fail[(verb, collection)]

    def create(self, collection: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._call("create", collection, name)
        key = (collection, namespace, name)
        if key in self.objects:
            raise api_error(409, "Conflict", f'{collection} "{name}" already exists')
        self.objects[key] = json.loads(json.dumps(body))  # what went over the wire
        return copy.deepcopy(self.objects[key])

    def replace(self, collection: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._call("replace", collection, name)
        self.objects[(collection, namespace, name)] = json.loads(json.dumps(body))
        return copy.deepcopy(body)

    def read(self, collection: str, namespace: str, name: str) -> dict[str, Any]:
        self._call("read", collection, name)
        try:
            return copy.deepcopy(self.objects[(collection, namespace, name)])
        except KeyError:
            raise api_error(404, "Not Found", f'{collection} "{name}" not found') from None

    def delete(self, collection: str, namespace: str, name: str, propagation: str | None) -> dict[str, Any]:
        self._call("delete", collection, name)
        if self.objects.pop((collection, namespace, name), None) is None:
            raise api_error(404, "Not Found", f'{collection} "{name}" not found')
        self.deletes.append((collection, name, propagation))
        return {"kind": "Status", "status": "Success"}

    def created(self, collection: str) -> list[dict[str, Any]]:
        return [o for (c, _, _), o in self.objects.items() if c == collection]

    # -- the scripted operator ----------------------------------------------------------------

    def _job_of(self, phase: str, namespace: str) -> tuple[str, str, str] | None:
        for key in self.objects:
            if key[1] != namespace or key[0] == "configmaps":
                continue
            if (phase == "prepare") == (key[0] == "jobs"):
                return key
        return None

    def _template(self, job: dict[str, Any], role: str) -> dict[str, Any]:
        spec = job["spec"]
        if role == "prepare":
            return spec["template"]
        if job["kind"] == "AscendJob":
            return spec["replicaSpecs"]["Master" if role == "master" else "Worker"]["template"]
        return next(t["template"] for t in spec["tasks"] if t["name"] == role)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        labels = dict(part.split("=", 1) for part in selector.split(","))
        phase = labels["q7x2.phase"]
        key = self._job_of(phase, namespace)
        ticks = self.script.get(phase, [])
        if key is None or not ticks:
            return []
        job = self.objects[key]
        i = self.ticks.get(phase, 0)
        self.ticks[phase] = i + 1
        tick = ticks[min(i, len(ticks) - 1)]
        job["status"] = copy.deepcopy(tick.status)
        out = []
        index = {"master": 0, "worker": 0, "prepare": 0}
        for p in tick.pods:
            template = copy.deepcopy(self._template(job, p.role))
            n = index[p.role]
            index[p.role] += 1
            name = f"{job['metadata']['name']}-{p.role}-{n}" if p.role != "prepare" else f"{job['metadata']['name']}-x7k2q"
            spec = template["spec"]
            spec["nodeName"] = p.node
            if p.rank is not None:
                for c in spec["containers"]:
                    if c["name"] == "ascend":
                        c["env"] = c["env"] + [{"name": "RANK", "value": p.rank}]
            statuses = {"initContainerStatuses": spec.get("initContainers", []), "containerStatuses": spec["containers"]}
            status: dict[str, Any] = {"phase": p.phase}
            for skey, containers in statuses.items():
                status[skey] = [_container_status(c["name"], p.exit_codes.get(c["name"])) for c in containers]
            out.append({"metadata": {"name": name, "namespace": namespace, "labels": template["metadata"]["labels"]}, "spec": spec, "status": status})
        return out


def _container_status(name: str, code: int | None) -> dict[str, Any]:
    state = {"terminated": {"exitCode": code}} if code is not None else {"running": {}}
    return {"name": name, "image": "q7x2/qwen25-mindspeed:2.0.0", "imageID": "", "ready": code is None, "restartCount": 0, "state": state}


class _Core:
    def __init__(self, server: FakeServer) -> None:
        self.s = server

    def create_namespaced_config_map(self, namespace: str, body: dict[str, Any]) -> client.V1ConfigMap:
        return client.V1ConfigMap.from_dict(self.s.create("configmaps", namespace, body))

    def replace_namespaced_config_map(self, name: str, namespace: str, body: dict[str, Any]) -> client.V1ConfigMap:
        return client.V1ConfigMap.from_dict(self.s.replace("configmaps", namespace, name, body))

    def read_namespaced_config_map(self, name: str, namespace: str) -> client.V1ConfigMap:
        return client.V1ConfigMap.from_dict(self.s.read("configmaps", namespace, name))

    def delete_namespaced_config_map(self, name: str, namespace: str) -> client.V1Status:
        return client.V1Status.from_dict(self.s.delete("configmaps", namespace, name, None))

    def list_namespaced_pod(self, namespace: str, label_selector: str | None = None) -> client.V1PodList:
        self.s._call("list", "pods", label_selector or "")
        return client.V1PodList.from_dict({"items": self.s.pods(namespace, label_selector or "")})

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str | None = None, follow: bool | None = None,
                                _preload_content: bool = True) -> LogResponse:
        self.s._call("log", "pods", f"{name}/{container}")
        assert _preload_content is False, "logs are streamed, not read whole"
        return LogResponse(self.s.logs.get((name, container or ""), []))


class _Batch:
    def __init__(self, server: FakeServer) -> None:
        self.s = server

    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> client.V1Job:
        return client.V1Job.from_dict(self.s.create("jobs", namespace, body))

    def read_namespaced_job(self, name: str, namespace: str) -> client.V1Job:
        return client.V1Job.from_dict(self.s.read("jobs", namespace, name))

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str | None = None) -> client.V1Status:
        return client.V1Status.from_dict(self.s.delete("jobs", namespace, name, propagation_policy))


class _Custom:
    def __init__(self, server: FakeServer) -> None:
        self.s = server

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.s.create(f"{plural}.{group}/{version}", namespace, body)

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict[str, Any]:
        return self.s.read(f"{plural}.{group}/{version}", namespace, name)

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                        propagation_policy: str | None = None) -> dict[str, Any]:
        return self.s.delete(f"{plural}.{group}/{version}", namespace, name, propagation_policy)
