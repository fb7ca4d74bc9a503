"""Fixtures shared by every test directory."""

from tests.sandbox_fixture import sandbox_cluster  # noqa: F401  (session fixture: a real 2-host cluster)
