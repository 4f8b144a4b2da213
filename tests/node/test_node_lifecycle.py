"""``cluster up --node`` and ``cluster down`` on the real machine: the kubelet registers it as a Ready
Node, a pod runs on the bridge network with a service-account token and reaches the API server
through the ``kubernetes`` Service, ``kubectl logs`` reaches the kubelet, and ``down`` removes every
process, pod, cgroup, mount, link and NAT rule, also after a crash that killed everything at once."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from bpfshare.controlplane import node_host
from bpfshare.controlplane.node import default_node_name, node_dir
from bpfshare.controlplane.pause import SANDBOX_IMAGE
from bpfshare.controlplane.procs import find
from bpfshare.controlplane.run import ControlPlane, start, stop
from tests.node.conftest import leftovers, require_node

pytestmark = [pytest.mark.kernel, pytest.mark.cluster, pytest.mark.node]


def pod(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "containers": [{"name": "sleep", "image": SANDBOX_IMAGE, "imagePullPolicy": "Never"}],
            "terminationGracePeriodSeconds": 1,
        },
    }


def wait_running(cp: ControlPlane, name: str, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        got = cp.kubectl("get", "pod", name, "-o", "json", check=False)
        if got.returncode == 0:
            doc = json.loads(got.stdout)
            if doc["status"].get("phase") == "Running" and doc["status"].get("podIP"):
                return doc  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            pytest.fail(
                f"pod {name} not Running: {got.stdout[-2000:]}{cp.kubectl('describe', 'pod', name, check=False).stdout}"
            )
        time.sleep(0.5)


FOREIGN_NETNS = "cni-bpfshare-lifecycle-foreign"  # named like containerd's, with none of our addresses


def test_up_runs_pods_and_down_after_a_crash_leaves_nothing(
    control_plane_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_node(control_plane_bin_dir)
    state_dir = tmp_path_factory.mktemp("node-lifecycle")
    node = default_node_name()
    try:
        cp = start(state_dir, control_plane_bin_dir, die_with_parent=True, node=node, timeout=180.0)
        info = json.loads(cp.kubectl("get", "node", node, "-o", "json").stdout)
        assert {c["type"]: c["status"] for c in info["status"]["conditions"]}["Ready"] == "True"
        assert info["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")

        cp.kubectl("apply", "-f", "-", input=json.dumps(pod("sleeper")))
        running = wait_running(cp, "sleeper")
        assert ipaddress.ip_address(running["status"]["podIP"]) in ipaddress.ip_network(node_host.POD_SUBNET)  # type: ignore[index]
        # The pod got a service-account token volume (the ServiceAccount admission plugin) ...
        volumes = [v["name"] for v in running["spec"]["volumes"]]  # type: ignore[index]
        assert any(v.startswith("kube-api-access-") for v in volumes)
        # ... and the kubelet's API answers kube-apiserver (client certificate, webhook authorization).
        logs = cp.kubectl("logs", "sleeper", check=False)
        assert logs.returncode == 0, logs.stderr
        # The pod's processes live under our cgroup root; from its network namespace the kubernetes
        # Service answers (the NAT rule standing in for kube-proxy).
        pids = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0] == "/pause"
            and f"/{node_host.CGROUP_ROOT}/kubepods/" in Path(f"/proc/{p.pid}/cgroup").read_text()
        ]
        assert pids, "no pod process under the node's cgroup root"
        answer = subprocess.run(
            ["nsenter", f"--net=/proc/{pids[0]}/ns/net", "python3", "-c",
             "import socket; socket.create_connection(('10.0.0.1', 443), timeout=3).close(); print('ok')"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert answer.stdout.strip() == "ok", answer.stderr

        # A crash: every process of the node and control plane killed at once, nothing stopped cleanly.
        for record in cp.processes.values():
            proc = find(record)
            if proc is not None:
                os.kill(proc.pid, signal.SIGKILL)
        # The pod's network namespace is in /run/netns, where the agent's DaemonSet looks; after the
        # crash it is ours to remove, and another runtime's namespace beside it is not.
        assert node_host.pod_netns(), "the pod's network namespace is not in /run/netns"
        subprocess.run(["ip", "netns", "add", FOREIGN_NETNS], check=True)
        assert leftovers(state_dir), "the crash left nothing to clean up: the test checks nothing"
    finally:
        stop(state_dir)
        foreign_kept = (node_host.NETNS_DIR / FOREIGN_NETNS).exists()
        subprocess.run(["ip", "netns", "del", FOREIGN_NETNS], capture_output=True)
    assert leftovers(state_dir) == []
    assert foreign_kept, f"cluster down removed {FOREIGN_NETNS}, a network namespace it did not make"
    assert not node_dir(state_dir).exists()
