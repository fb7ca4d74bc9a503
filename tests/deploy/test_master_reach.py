"""MASTER_PORT reachability before the job runs: a real listener and real TCP connections on this
machine; the "hosts" are local processes behind a minimal Transport, and a host cut off from the
master runs its commands in a network namespace of its own (no route anywhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence

import pytest
from deploy_fixtures import free_port

from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.master_reach import check_master_reachable
from q7x2_deploy.executor.preflight import HostReport
from q7x2_deploy.inventory import parse_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.transport.base import CommandResult, RemoteProcess, Transport
from tests.deploy.local_process import LocalProcess

from tests.foundation.test_validation import edited

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare for the cut-off host")


class _LocalHost(Transport):
    """A host that is this machine; `isolated` runs everything in an empty network namespace."""

    def __init__(self, host: str, isolated: bool = False) -> None:
        self.host, self.prefix = host, (["unshare", "-n"] if isolated else [])

    def start(self, argv: Sequence[str], *, merge_stderr: bool = True) -> RemoteProcess:
        return LocalProcess([*self.prefix, *argv])

    def run(self, argv: Sequence[str], *, stdin: bytes | Iterable[bytes] | None = None,
            timeout: float | None = 60.0) -> CommandResult:
        r = subprocess.run([*self.prefix, *argv], capture_output=True, text=True, timeout=timeout)
        return CommandResult(tuple(argv), r.returncode, r.stdout, r.stderr)

    def ping(self, timeout: float = 10.0) -> None: ...

    def close(self) -> None: ...


def _cluster(isolated: set[str]) -> tuple[Cluster, list[HostReport]]:
    data = edited(image__flavor="cpu", job__tools={"convert": "q7x2", "preprocess": "q7x2"}, master={"port": free_port()})
    data["hosts"][0]["address"], data["hosts"][1]["address"] = "127.0.0.1", "127.0.0.2"
    plan = build_plan(parse_inventory(data))
    cluster = Cluster(plan, {h.name: _LocalHost(h.name, h.name in isolated) for h in plan.hosts})
    reports = []
    for h in plan.hosts:
        r = HostReport(h.name, h.node_rank)
        r.add("ssh", "ok", "local")
        r.add("port", "ok" if h.name == "npu-a" else "skip", "")
        reports.append(r)
    return cluster, reports


def test_every_host_connects_to_the_master_port() -> None:
    cluster, reports = _cluster(set())
    check_master_reachable(cluster, reports)
    port = cluster.plan.master_port
    assert [(c.level, c.detail) for r in reports if (c := r.get("reach"))] == [("ok", f"connects to master 127.0.0.1:{port}")] * 2
    # the listener is gone: the port is free again for torchrun
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_host_that_cannot_reach_the_master_fails_by_name() -> None:
    cluster, reports = _cluster({"npu-b"})
    check_master_reachable(cluster, reports)  # returns once the connects are done, not at the listener's deadline
    a, b = (r.get("reach") for r in reports)
    assert a is not None and a.level == "ok"
    assert b is not None and b.level == "fail"
    assert b.detail.startswith(f"cannot connect to master npu-a at 127.0.0.1:{cluster.plan.master_port}: "), b.detail


def test_nothing_is_tested_when_the_master_port_is_taken() -> None:
    cluster, reports = _cluster(set())
    reports[0].replace(reports[0].get("port").__class__("port", "fail", "already in use"))  # type: ignore[union-attr]
    check_master_reachable(cluster, reports)
    assert {r.get("reach").level for r in reports} == {"skip"}  # type: ignore[union-attr]
