"""Random and hostile inventories: each either validates or fails with one-line violations.

Never a traceback, never a value with shell metacharacters slipping into a plan unquoted.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from q7x2_deploy.plan import build_plan
from q7x2_deploy.validation import validate_data, validate_text

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())

HOSTILE_TEXT = st.sampled_from(
    ["", " ", "a;b", "$(reboot)", "`id`", "x\ny", "x\x00y", "'", '"', "../..", "-rf", "--privileged", "é", "\u202e", "a" * 300, "localhost", "127.0.0.1", "::1", "0", "-1", "1e9", "null", "~", "*", "/", "//", "a b"]
)
SCALARS = st.one_of(HOSTILE_TEXT, st.text(max_size=40), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.booleans(), st.none())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)

# Every (path) in the example where a hostile value may land.
def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(BASE) if p]


def _set(data, path, value):
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _assert_contract(data) -> None:
    inv, violations = validate_data(data)
    if violations:
        for v in violations:
            line = v.format("inv.yaml")
            assert "\n" not in line.replace("\\n", ""), line
            assert "Traceback" not in line
        return
    assert inv is not None
    plan = build_plan(inv)
    for host in plan.hosts:
        for step in host.steps:
            # Round-trip through the one quoting function: the argv survives exactly.
            assert shlex.split(shlex.join(step.docker_run)) == step.docker_run


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=VALUES)
def test_one_hostile_value_anywhere(path, value):
    data = copy.deepcopy(BASE)
    _set(data, path, value)
    _assert_contract(data)


@settings(max_examples=150, deadline=None)
@given(extra_key=st.text(min_size=1, max_size=20), section=st.sampled_from(["ssh", "master", "image", "container", "job", "job.training", "job.paths"]))
def test_unknown_keys_never_pass(extra_key, section):
    data = copy.deepcopy(BASE)
    node = data
    for part in section.split("."):
        node = node[part]
    if extra_key in node:
        return
    node[extra_key] = 1
    inv, violations = validate_data(data)
    assert inv is not None or violations
    assert violations, f"unknown key {extra_key!r} under {section} passed"


@settings(max_examples=200, deadline=None)
@given(data=VALUES)
def test_arbitrary_documents(data):
    _assert_contract(data)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_yaml_text(text):
    _, violations = validate_text(text)
    for v in violations:
        assert v.format("inv.yaml")
