"""Hostile inventories on Kubernetes: refused with one-line violations, or rendered so that
every inventory value stays data.

The manifests are YAML read by kubectl and the API server: a value that broke out of its
scalar (a newline and `---`, a `: `, a quote) would add or change objects. So the rendered
stream must parse back to exactly the objects built, pass the offline schemas, carry every
env value word for word, and run no shell: each container's command is the step's argv list.
"""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from q7x2_deploy.backends.kubernetes.manifests import JOB_KINDS, build_manifests
from q7x2_deploy.validation import validate_data
from q7x2_runtime.steps import convert_argv, preprocess_argv
from tests.foundation.test_hostile_inventories import HOSTILE_TEXT, SHELLISH, VALUES
from tests.kubernetes.offline_schemas import pod_templates, validate_stream
from tests.kubernetes.test_manifests import kubernetes_data
from tests.data_paths import data_paths

BASE = kubernetes_data()


PATHS = [p for p in data_paths(BASE) if p]  # every place in the example a hostile value may land
INJECTIONS = st.sampled_from(["x\n---\nkind: Pod", "a: b", "- item", "'", '"', "{x: 1}", "[1]", "&a", "*a", "!!python/object", "#c", "|", ">",
                              "%YAML", "null", "true", "0x1f", "1e3", "  lead", "trail  ", "\t", "${HOME}", "$(id)", "`id`", "a;b"])  # fmt: skip


def _contract(data: dict, kind: str) -> None:
    inv, violations = validate_data(data)
    if violations:
        for v in violations:
            line = v.format("inv.yaml")
            assert "\n" not in line.replace("\\n", "") and "Traceback" not in line, line
        return
    assert inv is not None
    if inv.scheduler.kind != "kubernetes":
        return
    m = build_manifests(inv)
    text = m.to_yaml()
    objects = validate_stream(text)
    assert objects == m.objects, "the YAML stream does not parse back to the objects built"
    env_values = {k: v for k, v in inv.job.env.items()}
    steps = {"convert": convert_argv(inv.job, inv.image.flavor), "preprocess": preprocess_argv(inv.job, inv.image.flavor)}
    for obj in objects:
        for template in pod_templates(obj):
            spec = template["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                assert c["command"][0] == "q7x2-runtime" and "args" not in c, c["command"][:3]
                if c["name"] in steps:
                    assert c["command"] == steps[c["name"]]
                got = {e["name"]: e["value"] for e in c["env"] if "value" in e}
                for k, v in env_values.items():
                    assert got[k] == v


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=st.one_of(VALUES, HOSTILE_TEXT, INJECTIONS), kind=st.sampled_from(JOB_KINDS))
def test_one_hostile_value_anywhere(path, value, kind):
    data = copy.deepcopy(BASE)
    data["scheduler"]["kubernetes"]["kind"] = kind
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    _contract(data, kind)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.one_of(SHELLISH, INJECTIONS.filter(str.isprintable)), min_size=1, max_size=4), kind=st.sampled_from(JOB_KINDS))
def test_env_values_reach_the_pods_exactly(values, kind):
    data = copy.deepcopy(BASE)
    data["scheduler"]["kubernetes"]["kind"] = kind
    data["job"]["env"] = {"HCCL_CONNECT_TIMEOUT": "1200", **{f"Q7X2_V{i}": v for i, v in enumerate(values)}}
    inv, violations = validate_data(data)
    assert violations == [], "printable env values are accepted, not refused"
    _contract(data, kind)


def test_an_injected_document_stays_a_value():
    data = copy.deepcopy(BASE)
    data["job"]["env"]["Q7X2_X"] = "x\n---\napiVersion: v1\nkind: Pod"
    inv, violations = validate_data(data)
    if violations:  # a line break is a control character: refused is as good as quoted
        assert all("Q7X2_X" in v.dotted for v in violations)
        return
    text = build_manifests(inv).to_yaml()
    assert [o["kind"] for o in yaml.safe_load_all(text)].count("Pod") == 0
