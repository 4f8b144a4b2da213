"""The agent's view of its node's pods on the real node: the pod watch (a field selector on
spec.nodeName) with the places the container runtime gives (CRI), as pods start, are relabelled and go.
A pod bound to another node never reaches this node's watch."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from bpfshare.agent.pods import PlacedPod, PodInventory
from bpfshare.agent.podwatch import PodWatch
from bpfshare.api.resources import NodeSelector
from bpfshare.controlplane.pause import SANDBOX_IMAGE
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import poll
from bpfshare.cri.client import CriClient

pytestmark = [pytest.mark.kernel, pytest.mark.cluster, pytest.mark.node]

WEB = NodeSelector.parse({"matchLabels": {"app": "inv-web"}}, "selector")


def pod(name: str, labels: dict[str, str], node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "sleep", "image": SANDBOX_IMAGE, "imagePullPolicy": "Never"}],
        "terminationGracePeriodSeconds": 1,
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": spec}  # fmt: skip


def test_the_agents_pods_follow_the_node_as_pods_come_and_go(real_node: ControlPlane) -> None:
    from kubernetes import client

    cp = real_node
    assert cp.containerd_address is not None
    names = ("inv-a", "inv-b", "inv-elsewhere")
    seen: list[str] = []
    with CriClient(cp.containerd_address) as cri:
        inventory = PodInventory(cri.place_of_pod)

        def deliver(kind: str | None, body: dict[str, Any]) -> None:
            seen.append(body["metadata"]["name"])
            inventory.on_pod(kind, body)

        watch = PodWatch(client.CoreV1Api(cp.api_client()), cp.node, deliver, server_timeout=30)
        watch.start()
        try:
            cp.kubectl("apply", "-f", "-", input=json.dumps(pod("inv-a", {"app": "inv-web"})))
            cp.kubectl("apply", "-f", "-", input=json.dumps(pod("inv-b", {"app": "inv-db"})))
            cp.kubectl("apply", "-f", "-", input=json.dumps(pod("inv-elsewhere", {"app": "inv-web"}, "no-such-node")))

            def web() -> list[PlacedPod]:
                return inventory.placed("default", WEB)[0]

            (placed,) = poll(web, "inv-a to be running and placed")
            assert placed.pod.name == "inv-a"
            assert os.stat(placed.place.netns).st_ino == os.stat(f"/proc/{placed.place.pid}/ns/net").st_ino

            cp.kubectl("label", "pod", "inv-b", "app=inv-web", "--overwrite")
            poll(lambda: [p.pod.name for p in web()] == ["inv-a", "inv-b"], "relabelled inv-b to be selected")
            cp.kubectl("label", "pod", "inv-a", "app=inv-gone", "--overwrite")
            poll(lambda: [p.pod.name for p in web()] == ["inv-b"], "relabelled inv-a to leave the selection")
            cp.kubectl("delete", "pod", "inv-b", "--wait=false")
            poll(lambda: not any(p.name == "inv-b" for p in inventory.pods()), "deleted inv-b to be forgotten")
            assert "inv-elsewhere" not in seen, "another node's pod reached this node's watch"
        finally:
            watch.stop()
            cp.kubectl("delete", "pod", *names, "--ignore-not-found", "--wait=false", check=False)
