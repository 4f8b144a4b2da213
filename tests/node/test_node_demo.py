"""``bpfshare demo --node``, as the README gives it: a real node started for it, the image built and
imported, deploy/ applied, the seed scenario through the pod-run agent, and everything it started
removed after."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bpfshare.controlplane.node_demo import HOST_PIN_ROOT
from tests.node.conftest import host_pin_root_removed_after, leftovers, require_node

pytestmark = [pytest.mark.kernel, pytest.mark.cluster, pytest.mark.node]


def test_node_demo_runs_the_product_as_pods_and_cleans_up(
    control_plane_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_node(control_plane_bin_dir)
    state_dir = tmp_path_factory.mktemp("demo") / "cluster"  # short: the node's unix sockets live in it
    env = {**os.environ, "BPFSHARE_CLUSTER_DIR": str(state_dir)}
    env.pop("KUBECONFIG", None)
    try:
        with host_pin_root_removed_after():
            proc = subprocess.run(
                [sys.executable, "-m", "bpfshare", "demo", "--node"],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
        out = proc.stdout
        assert proc.returncode == 0, out + proc.stderr
        assert re.search(r"cluster: node \S+ Ready in", out), out
        # The agent and the controller ran as pods of deploy/'s DaemonSet and Deployment.
        assert re.search(r"daemonset.apps/bpfshare-agent\s+1\s+1\s+1\s+1\s+1", out), out
        assert re.search(r"deployment.apps/bpfshare-controller\s+2/2", out), out
        assert re.search(r"flow-counts\s+Array\s+4\s+8\s+4\s+1/1\s+AllNodesReady", out), out
        counts = dict(re.findall(r"(tc ingress|cgroup egress) (\d+)", out))
        assert int(counts["tc ingress"]) >= 10 and int(counts["cgroup egress"]) >= 10, out
        assert "cluster: control plane and node stopped" in out
        assert not (HOST_PIN_ROOT / "maps" / "flow-counts").exists(), "the demo's map outlived it"
    finally:
        subprocess.run([sys.executable, "-m", "bpfshare", "cluster", "down"], env=env, capture_output=True)
    assert leftovers(state_dir) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "bpfshare-demo" not in netns
