"""Random and hostile inventories: each either validates or fails with one-line violations.

Never a traceback, never a value with shell metacharacters slipping into a plan unquoted: the
quoted `docker run` line of every step is run by a real `sh`, with `docker` standing for a
program that prints the argv it was given, and that argv must be the plan's, word for word.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from q7x2_deploy.plan import Plan, build_plan, shell_line
from q7x2_deploy.validation import validate_data, validate_text
from tests.data_paths import data_paths

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())

HOSTILE_TEXT = st.sampled_from(
    ["", " ", "a;b", "$(reboot)", "`id`", "x\ny", "x\x00y", "'", '"', "../..", "-rf", "--privileged", "é", "\u202e", "a" * 300, "localhost", "127.0.0.1", "::1", "0", "-1", "1e9", "null", "~", "*", "/", "//", "a b"]
)
SCALARS = st.one_of(HOSTILE_TEXT, st.text(max_size=40), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.booleans(), st.none())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


PATHS = [p for p in data_paths(BASE) if p]  # every place in the example a hostile value may land


def _set(data, path, value):
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def argv_through_shell(lines: list[str]) -> list[list[str]]:
    """Run each quoted line with `sh -c` and return, per line, the argv `docker` was handed."""
    printer = shell_line([sys.executable, "-S", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"])
    script = f'docker() {{ {printer} "$@"; }}\n' + "\n".join(lines) + "\n"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines()]


def assert_shell_hands_over_the_plans_argv(plan: Plan) -> None:
    steps = [step for host in plan.hosts for step in host.steps]
    received = argv_through_shell([shell_line(step.docker_run) for step in steps])
    assert received == [step.docker_run[1:] for step in steps]


def _assert_contract(data) -> None:
    inv, violations = validate_data(data)
    if violations:
        for v in violations:
            line = v.format("inv.yaml")
            assert "\n" not in line.replace("\\n", ""), line
            assert "Traceback" not in line
        return
    assert inv is not None
    assert_shell_hands_over_the_plans_argv(build_plan(inv))


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


# Printable text of every kind, shell metacharacters first: env values may hold all of it.
SHELLISH = st.text(alphabet=st.sampled_from(list(" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~aZ09") + ["é", "ß", "中", "\u00e9", "😀"]), min_size=0, max_size=30)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(SHELLISH, min_size=1, max_size=4))
def test_env_values_with_shell_syntax_reach_docker_exactly(values):
    data = copy.deepcopy(BASE)
    data["job"]["env"] = {f"Q7X2_V{i}": v for i, v in enumerate(values)}
    inv, violations = validate_data(data)
    assert violations == [], "printable env values are accepted and quoted, not refused"
    plan = build_plan(inv)
    assert_shell_hands_over_the_plans_argv(plan)
    for i, v in enumerate(values):
        assert f"Q7X2_V{i}={v}" in plan.hosts[0].steps[0].docker_run


def test_the_shell_check_can_fail():
    # The check itself is not a tautology: a line joined without quoting hands over other words.
    steps = build_plan(validate_data(BASE)[0]).hosts[0].steps
    argv = steps[0].docker_run + ["a b", "$HOME"]
    unquoted = " ".join(argv)
    assert argv_through_shell([unquoted])[0] != argv[1:]
    assert argv_through_shell([shell_line(argv)])[0] == argv[1:]
