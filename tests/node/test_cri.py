"""The CRI client against the real node's containerd: a running pod's network namespace and cgroup, as
the runtime reports them, are the ones its processes are in; a pod that is gone has no place."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bpfshare.controlplane.pause import SANDBOX_IMAGE
from bpfshare.controlplane.run import ControlPlane
from bpfshare.cri.client import CriClient
from bpfshare.kernel.cgroup import cgroup2_root

pytestmark = [pytest.mark.kernel, pytest.mark.cluster, pytest.mark.node]


def run_pod(cp: ControlPlane, name: str, *, host_network: bool = False) -> dict[str, object]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "cri-test"}},
        "spec": {
            "hostNetwork": host_network,
            "containers": [{"name": "sleep", "image": SANDBOX_IMAGE, "imagePullPolicy": "Never"}],
            "terminationGracePeriodSeconds": 1,
        },
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps(pod))
    deadline = time.monotonic() + 60
    while True:
        doc = json.loads(cp.kubectl("get", "pod", name, "-o", "json").stdout)
        if doc["status"].get("phase") == "Running":
            return doc  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            pytest.fail(f"pod {name} not Running: {doc['status']}")
        time.sleep(0.3)


def inode(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def unified_cgroup(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"process {pid} is in no cgroup v2 cgroup")


def test_a_running_pods_namespace_and_cgroup_are_where_its_processes_are(real_node: ControlPlane) -> None:
    cp = real_node
    assert cp.containerd_address is not None
    try:
        pod = run_pod(cp, "cri-probe")
        uid = pod["metadata"]["uid"]  # type: ignore[index]
        with CriClient(cp.containerd_address) as cri:
            assert cri.version().startswith("containerd ")
            place = cri.place_of_pod(uid)
            assert place is not None
            assert (place.namespace, place.name, place.uid) == ("default", "cri-probe", uid)
            assert place.pid > 0
            # The namespace the runtime names is the one the pod's first process is in ...
            assert inode(place.netns) == inode(f"/proc/{place.pid}/ns/net")
            assert inode(place.netns) != inode("/proc/self/ns/net")
            # ... and the cgroup is the pod's: its processes are below it, in the v2 hierarchy.
            assert (cgroup2_root() / place.cgroup).is_dir()
            assert unified_cgroup(place.pid).startswith(f"/{place.cgroup}/")
            assert place.cgroup.endswith(f"pod{uid}")

            cp.kubectl("delete", "pod", "cri-probe", "--wait=true", "--timeout=60s")
            assert cri.place_of_pod(uid) is None
    finally:
        cp.kubectl("delete", "pod", "cri-probe", "--ignore-not-found", "--wait=false", check=False)


def test_a_host_network_pod_has_its_cgroup_and_no_namespace(real_node: ControlPlane) -> None:
    cp = real_node
    assert cp.containerd_address is not None
    try:
        pod = run_pod(cp, "cri-host", host_network=True)
        with CriClient(cp.containerd_address) as cri:
            place = cri.place_of_pod(pod["metadata"]["uid"])  # type: ignore[index]
        assert place is not None and place.netns == ""
        assert unified_cgroup(place.pid).startswith(f"/{place.cgroup}/")
    finally:
        cp.kubectl("delete", "pod", "cri-host", "--ignore-not-found", "--wait=false", check=False)
