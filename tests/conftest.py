"""Shared test fixtures.

Tests that need root, the kernel's BPF or the local control plane call ``require_*``; on a machine
without them they skip, but with ``BPFSHARE_REQUIRE_ALL=1`` (set by .ci/run) every skip, wherever it
comes from, is turned into a failure, so CI cannot go green by skipping.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL = os.environ.get("BPFSHARE_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but BPFSHARE_REQUIRE_ALL=1 forbids skips: {reason}"


pytest_plugins = [
    "tests.fixtures.kernel",
    "tests.fixtures.netenv",
    "tests.fixtures.objects",
    "tests.fixtures.cluster",
    "tests.fixtures.agents",
]
