"""Fixtures for the kernel layer's tests. Tests marked ``kernel`` need root (skipped otherwise,
which BPFSHARE_REQUIRE_ALL=1 turns into a failure)."""

from __future__ import annotations

import pytest

from tests.fixtures.kernel import require_root
from tests.fixtures.netenv import cgroup_dir, netns_pair  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def _root_for_kernel_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") is not None:
        require_root()
