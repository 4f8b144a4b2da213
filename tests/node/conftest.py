"""A real node for the tests: the local control plane with containerd, CNI, a kubelet,
kube-controller-manager and kube-scheduler (``cluster up --node``), in a temporary state directory.

Only one node can run on a machine at a time (its address, bridge, NAT chain and cgroup root have
fixed names), so the fixture is module-scoped and each module that needs one gets its own, one after
the other. Its processes get SIGKILL if pytest dies; what they leave is removed by name by the next
start or by ``bpfshare cluster down``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpfshare.controlplane import ControlPlaneError
from bpfshare.controlplane.node import default_node_name, require_tools
from bpfshare.controlplane.run import ControlPlane, start, stop


def require_node(bin_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a real node (kubelet, containerd) needs root")
    try:
        require_tools()
    except ControlPlaneError as exc:
        pytest.skip(f"no real node on this machine: {exc}")


@pytest.fixture(scope="module")
def real_node(control_plane_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    require_node(control_plane_bin_dir)
    state_dir = tmp_path_factory.mktemp("node")
    cp = start(state_dir, control_plane_bin_dir, die_with_parent=True, node=default_node_name(), timeout=180.0)
    try:
        yield cp
    finally:
        stop(state_dir, keep_logs=True)
