"""The real node's state directory: one whose unix sockets would not fit is refused up front, by name; so is a
second node while another state directory's node runs on the machine."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
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


@pytest.fixture
def running_kubelet(tmp_path: Path) -> Iterator[Path]:
    """A process whose command line is that of a node's kubelet (``kubelet --config=<state>/node/...``)."""
    other = tmp_path / "other-cluster"
    config = other / "node" / "kubelet" / "config.yaml"
    script = f'exec -a kubelet {sys.executable} -c "import time; time.sleep(60)" --config="{config}"'
    proc = subprocess.Popen(["bash", "-c", script])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0] != b"kubelet":
            assert time.monotonic() < deadline, "the stand-in kubelet did not start"
            time.sleep(0.01)
        yield other
    finally:
        proc.kill()
        proc.wait()


def test_a_second_node_is_refused_naming_the_running_one(running_kubelet: Path, tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError, match="another bpfshare node runs on this machine") as err:
        node.check_no_other_node(tmp_path / "mine")
    assert f"BPFSHARE_CLUSTER_DIR={running_kubelet} bpfshare cluster down" in str(err.value)


def test_the_nodes_own_kubelet_is_not_another(running_kubelet: Path) -> None:
    node.check_no_other_node(running_kubelet)  # restarting the same state directory's node


def test_only_a_kubelet_with_a_node_config_counts() -> None:
    assert node.kubelet_config_of(["/bin/kubelet", "--config=/s/node/kubelet/config.yaml"]) == Path(
        "/s/node/kubelet/config.yaml"
    )
    assert node.kubelet_config_of(["/usr/bin/kubelet", "--config=/var/lib/kubelet/config.yaml"]) is None
    assert node.kubelet_config_of(["sleep", "--config=/s/node/kubelet/config.yaml"]) is None
