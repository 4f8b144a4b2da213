"""The real node's state directory: one whose unix sockets would not fit is refused up front, by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.controlplane import ControlPlaneError, node


def test_the_default_and_pytests_directories_fit() -> None:
    node.check_socket_paths(Path.home() / ".cache" / "bpfshare" / "cluster")
    node.check_socket_paths(Path("/tmp/pytest-of-root/pytest-1234/node0"))


def test_a_too_deep_state_directory_is_refused_naming_it() -> None:
    """containerd exited with "unix socket path too long (> 104)" and the kubelet with "bind: invalid
    argument" for pytest's per-test directory of a long test name."""
    deep = Path("/tmp/pytest-of-root/pytest-18/test_node_demo_runs_the_product_as_pods_and_cleans_up0/cluster")
    with pytest.raises(ControlPlaneError, match=r"too deep for the node's unix sockets.*BPFSHARE_CLUSTER_DIR") as err:
        node.check_socket_paths(deep)
    assert str(deep) in str(err.value)
