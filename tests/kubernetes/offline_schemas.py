"""Offline validation of rendered Kubernetes objects (no API server runs on these machines).

Core kinds (ConfigMap, batch/v1 Job, and every pod template as a Pod) against the Kubernetes
OpenAPI schemas kubernetes-validate ships, in strict mode (an unknown field is an error); the
AscendJob and the Volcano Job against their CRDs' openAPIV3Schema (jsonschema), plus the check
the API server does silently: a field the CRD's structural schema does not know is pruned, so
it is reported here as an error instead.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# shared/reference beside the repository (as in CI's fresh clone), or beside the main checkout
# for a git worktree one level further down.
_CANDIDATES = [ROOT.parent / "shared", ROOT.parent.parent / "shared"]
SCHEMAS = next((c for c in _CANDIDATES if c.is_dir()), _CANDIDATES[0]) / "reference" / "k8s-schemas"
CRD_FILES = {
    ("mindxdl.gitee.com/v1", "AscendJob"): "mindcluster-ascendjob.crd.yaml",
    ("batch.volcano.sh/v1alpha1", "Job"): "volcano-batch.volcano.sh_jobs.crd.yaml",
}
KUBERNETES_VERSION = "1.30"
# kubernetes-validate reads its schema files again on every call (160 ms each here); they never
# change, and the validators only read them.
kubernetes_validate.utils.schema_contents = functools.cache(kubernetes_validate.utils.schema_contents)  # type: ignore[method-assign]
# libyaml's parser when present: the same YAML, several times faster on these large streams.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    path = SCHEMAS / CRD_FILES[(api_version, kind)]
    if not path.is_file():
        pytest.skip(f"{path} is missing (the shared reference directory beside the repository)")
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=YAML_LOADER)
    version = api_version.rsplit("/", 1)[1]
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return entry["schema"]["openAPIV3Schema"]


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields a structural schema would drop on the server: not under `properties`, no
    `additionalProperties` schema, no x-kubernetes-preserve-unknown-fields."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return []
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                out += pruned_fields(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                out += pruned_fields(v, extra, f"{path}.{k}")
            elif path != ".metadata":  # the object's own metadata is ObjectMeta, never pruned
                out.append(f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += pruned_fields(v, schema["items"], f"{path}[{i}]")
    return out


def pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] == "AscendJob":
        return [r["template"] for r in spec["replicaSpecs"].values()]
    if obj["apiVersion"] == "batch.volcano.sh/v1alpha1":
        return [t["template"] for t in spec["tasks"]]
    if obj["apiVersion"] == "batch/v1":
        return [spec["template"]]
    return []


def validate_object(obj: dict[str, Any]) -> None:
    """Raise AssertionError naming the first problem of one object."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_FILES:
        schema = crd_schema(*key)
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, f"{obj['kind']} {obj['metadata']['name']}: {errors[0].json_path}: {errors[0].message}"
        dropped = pruned_fields(obj, schema)
        assert not dropped, f"{obj['kind']} {obj['metadata']['name']}: the API server would drop {dropped}"
    else:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {e}") from None
    # A pod template is a Pod's metadata and spec: check it with the core Pod schema too.
    for template in pod_templates(obj):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "template", **template.get("metadata", {})}, "spec": template["spec"]}
        try:
            kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: pod template: {e}") from None


def validate_stream(text: str) -> list[dict[str, Any]]:
    """Parse a rendered YAML stream as kubectl would and validate every object in it."""
    objects = [o for o in yaml.load_all(text, Loader=YAML_LOADER) if o is not None]
    for obj in objects:
        validate_object(obj)
    return objects
