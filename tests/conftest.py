"""Fixtures and markers shared by every test directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandbox_fixture import sandbox_cluster  # noqa: F401  (session fixture: a real 2-host cluster)

TESTS = Path(__file__).resolve().parent
# Every test under these directories runs against a real sandbox cluster (root, network
# namespaces, Docker engines), whether or not it asks for the fixture by name.
SANDBOX_DIRS = tuple(TESTS / d for d in ("e2e", "drills"))
# The recovery drills take about half an hour together and bring up a 3-host sandbox of their
# own: the default run (and CI, which must stay under an hour) keeps one, a killed container
# restarted from the last save with the same losses (a few minutes with its set-up);
# Q7X2_DRILLS=1 runs all eight (docs/reliability.md).
ALL_DRILLS = os.environ.get("Q7X2_DRILLS") == "1"
CI_DRILLS: tuple[str, ...] = ("test_4_killed_container_restarts_on_the_same_hosts",)
# Tests marked `long` (a cold download of an Ascend wheelhouse, ...) would push CI past its hour
# on a fresh machine; Q7X2_LONG=1 runs them.
RUN_LONG = os.environ.get("Q7X2_LONG") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark sandbox tests so that `-m "not sandbox"` (the fast tier) leaves them out.

    A test is a sandbox test when it uses the `sandbox_cluster` fixture (directly or through
    another fixture) or lives under one of SANDBOX_DIRS; the marker in the module is then
    optional, and a new sandbox test cannot slip into the fast tier by forgetting it.
    """
    for item in items:
        path = Path(str(item.path)).resolve()
        in_sandbox_dir = any(path.is_relative_to(d) for d in SANDBOX_DIRS)
        if in_sandbox_dir or "sandbox_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.sandbox)
        if item.get_closest_marker("long") is not None and not RUN_LONG:
            item.add_marker(pytest.mark.skip(reason="a long test (downloads or training beyond CI's hour): "
                                                    "Q7X2_LONG=1 runs it"))
        if path.is_relative_to(TESTS / "drills") and not ALL_DRILLS and item.name.split("[")[0] not in CI_DRILLS:
            item.add_marker(pytest.mark.skip(reason="a long recovery drill: Q7X2_DRILLS=1 runs every drill"))


@pytest.fixture(scope="session", autouse=True)
def _installation_records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What an image build records (`doctor --record`) goes to a directory of the run's own, never
    into this machine's /usr/local/share/q7x2, and a record found there cannot leak into a test."""
    before = os.environ.get("Q7X2_SHARE_DIR")
    os.environ["Q7X2_SHARE_DIR"] = str(tmp_path_factory.mktemp("share"))
    yield
    if before is None:
        os.environ.pop("Q7X2_SHARE_DIR", None)
    else:
        os.environ["Q7X2_SHARE_DIR"] = before
