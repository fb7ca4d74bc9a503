"""The failure diagnosis names the host that caused a failed job, on fixture logs of each class.

The fixture logs (tests/fixtures/failures/) are written for these tests around the error texts
that HCCL, torch_npu, torchrun and gloo really print (EI0002, EI0006, NPU out of memory, closed
gloo pairs, segfaults), with the consequence errors that every other host prints around them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from q7x2_deploy.diagnosis import (
    HOST_LOST,
    NPU_FAULT,
    PYTHON_EXCEPTION,
    UNKNOWN,
    CONTAINER_EXIT,
    diagnose,
    evidence_from_logs,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "failures"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "case.json").is_file())


def _case(name: str):
    d = FIXTURES / name
    case = json.loads((d / "case.json").read_text())
    logs = {h: (d / f"{h}.log").read_text().splitlines() for h in case["ranks"] if (d / f"{h}.log").is_file()}
    return case, evidence_from_logs(logs, case["ranks"], case["addresses"])


@pytest.mark.parametrize("name", CASES)
def test_fixture_names_the_culprit(name):
    case, evidence = _case(name)
    d = diagnose(evidence, npus_per_node=case["npus_per_node"])
    want = case["expect"]
    assert (d.cause, d.host, d.rank) == (want["cause"], want["host"], want["rank"]), d.headline()
    assert d.headline().startswith(f"likely cause: {want['cause']} on {want['host']} (rank {want['rank']})")
    assert d.evidence and "\n" not in d.headline()


def test_every_class_has_a_fixture():
    causes = {json.loads((FIXTURES / n / "case.json").read_text())["expect"]["cause"] for n in CASES}
    assert len(causes) == len(CASES) >= 6


def test_order_of_hosts_does_not_matter():
    for name in CASES:
        case, evidence = _case(name)
        a = diagnose(evidence, npus_per_node=case["npus_per_node"])
        b = diagnose(list(reversed(evidence)), npus_per_node=case["npus_per_node"])
        assert (a.cause, a.host) == (b.cause, b.host), name


def test_lost_host_wins_over_the_timeouts_it_caused():
    case, evidence = _case("hccl_exec_timeout")
    ev = evidence_from_logs({e.host: e.lines for e in evidence}, case["ranks"], case["addresses"], lost=["npu-a"])
    d = diagnose(ev, npus_per_node=8)
    assert (d.cause, d.host) == (HOST_LOST, "npu-a")


def test_npu_alarm_from_the_last_check():
    ev = evidence_from_logs({"a": ["ok"], "b": ["ok"]}, {"a": 0, "b": 1}, {"a": "10.0.0.1", "b": "10.0.0.2"},
                            check_failures={"b": ["npu: unhealthy: NPU 1 Alarm"]})
    d = diagnose(ev)
    assert (d.cause, d.host, d.rank) == (NPU_FAULT, "b", 1)
    assert "NPU 1 Alarm" in d.headline()


def test_the_first_exception_not_the_hundred_that_followed():
    lines = ["Traceback (most recent call last):", '  File "x.py", line 1, in f', "KeyError: 'lm_head.weight'"]
    lines += ["Traceback (most recent call last):", "torch.distributed.DistBackendError: peer gone"] * 100
    ev = evidence_from_logs({"a": lines, "b": []}, {"a": 0, "b": 1}, {})
    d = diagnose(ev)
    assert (d.cause, d.host) == (PYTHON_EXCEPTION, "a")
    assert "KeyError" in d.detail


def test_nothing_known_falls_back_to_the_first_failure_or_unknown():
    ev = evidence_from_logs({"a": ["step 1"], "b": ["step 1"]}, {"a": 0, "b": 1}, {}, failed_first="b")
    d = diagnose(ev)
    assert (d.cause, d.host) == (CONTAINER_EXIT, "b")
    assert diagnose(evidence_from_logs({}, {"a": 0}, {})).cause == UNKNOWN
