"""A node whose master never appears fails within the job's connect timeout, naming the master."""

from __future__ import annotations

import pytest

from tests.pretrain.cluster_helpers import free_port, prepare, run_nodes, write_job

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 4
# The point is a bounded wait (torchrun's own default is 600 s): the launcher's start-point
# agreement and torchrun's rendezvous each wait TIMEOUT_S, plus process start-up on a busy machine.
GIVES_UP_WITHIN_S = 2 * TIMEOUT_S + 60


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    # Nothing is loaded before the nodes meet, so the sample alone is enough.
    return prepare(tmp_path_factory.mktemp("unreachable"), steps=False)


def test_worker_node_without_master(prepared) -> None:
    port = free_port()  # nothing listens there
    job = write_job(prepared, "nomaster", port=port, connect_timeout_s=TIMEOUT_S)
    [result] = run_nodes(job, [1], timeout=60)
    assert result.returncode != 0
    assert f"could not reach the master 127.0.0.1:{port} within {TIMEOUT_S} s" in result.output
    assert "cluster.connect_timeout_s" in result.output
    assert result.seconds < GIVES_UP_WITHIN_S


def test_master_node_without_workers(prepared) -> None:
    port = free_port()
    job = write_job(prepared, "noworker", port=port, connect_timeout_s=TIMEOUT_S)
    [result] = run_nodes(job, [0], timeout=60)
    assert result.returncode != 0
    assert f"only 1 of 2 nodes joined the master 127.0.0.1:{port} within {TIMEOUT_S} s" in result.output
    assert result.seconds < GIVES_UP_WITHIN_S
