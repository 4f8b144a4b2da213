"""Shared test fixtures.

Tests that need root, the kernel's BPF or the local control plane call ``require_*``; on a machine
without them they skip, but with ``BPFSHARE_REQUIRE_ALL=1`` (set by .ci/run) every skip, wherever it
comes from, is turned into a failure, so CI cannot go green by skipping.

``make test`` runs the tests marked neither ``kernel`` nor ``cluster`` first, under setpriv with every
capability dropped and ``BPFSHARE_NO_CAPS=1``: the session then refuses to start unless the process
really holds no capability (and cannot regain one), so a test that needs a capability but lacks the
``kernel`` marker fails there instead of passing as root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_ALL = os.environ.get("BPFSHARE_REQUIRE_ALL") == "1"
NO_CAPS = os.environ.get("BPFSHARE_NO_CAPS") == "1"
PRIVILEGED_MARKERS = ("kernel", "cluster")


def capability_sets(status: str) -> dict[str, int]:
    """The Cap* and NoNewPrivs lines of a /proc/<pid>/status text, as integers."""
    out: dict[str, int] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value.strip(), 16)
        elif key == "NoNewPrivs":
            out[key] = int(value.strip())
    return out


def privileges_left(sets: dict[str, int], euid: int) -> list[str]:
    """Why a process with these sets could still use a capability (empty: it cannot)."""
    left = [f"{name} is {sets.get(name, -1):#x}" for name in ("CapEff", "CapPrm", "CapInh", "CapAmb") if sets.get(name)]
    if sets.get("NoNewPrivs") != 1:
        left.append("NoNewPrivs is not set (a setuid or file-capability program would regain some)")
    if euid == 0 and sets.get("CapBnd"):
        # root's execve gets permitted = bounding set: the bounding set must be empty too.
        left.append(f"CapBnd is {sets['CapBnd']:#x} and the user is root")
    return left


def pytest_configure(config: pytest.Config) -> None:
    if NO_CAPS:
        left = privileges_left(capability_sets(Path("/proc/self/status").read_text()), os.geteuid())
        if left:
            raise pytest.UsageError(
                "BPFSHARE_NO_CAPS=1 but this process can use capabilities: "
                + "; ".join(left)
                + " (run it under: setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs)"
            )


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if NO_CAPS:
        marked = [i.nodeid for i in items if any(i.get_closest_marker(m) for m in PRIVILEGED_MARKERS)]
        if marked:
            raise pytest.UsageError(
                f"BPFSHARE_NO_CAPS=1 selects tests marked kernel or cluster (use -m 'not kernel and not cluster'): "
                f"{', '.join(marked[:5])}{' ...' if len(marked) > 5 else ''}"
            )


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
