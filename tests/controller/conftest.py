"""The controller tests' fixtures (tests/fixtures/controller.py); the control plane's come from
tests/fixtures/cluster.py, which tests/conftest.py registers for every directory."""

from tests.fixtures.controller import controller_cluster, ctl

__all__ = ["controller_cluster", "ctl"]
