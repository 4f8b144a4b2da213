"""The agent's pods (agent/pods.py, agent/podwatch.py): which running pods a selector picks, where
each is (asked of the runtime once per sandbox), and what changes wake the programs; the pod watch asks
the API server for this node's pods only, and a pod deleted while the watch was away is delivered."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bpfshare.agent.pods import PodInventory
from bpfshare.agent.podwatch import PodWatch
from bpfshare.api.resources import NodeSelector
from bpfshare.cri.pods import PodPlace
from bpfshare.errors import BpfshareError

NODE = "worker-1"
WEB = NodeSelector.parse({"matchLabels": {"app": "web"}}, "spec.attach.tc.pods.selector")


def pod(name: str, *, labels: dict[str, str] | None = None, phase: str = "Running", ip: str = "10.1.0.2",
        namespace: str = "shop", deleting: bool = False, node: str = NODE) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    status: dict[str, Any] = {"phase": phase, "podIPs": [{"ip": ip}] if phase == "Running" else []}
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status}


class Runtime:
    """What the container runtime answers for each pod UID, and how often it was asked."""

    def __init__(self) -> None:
        self.places: dict[str, PodPlace] = {}
        self.asked: list[str] = []
        self.fail: str | None = None

    def add(self, name: str, netns: str) -> None:
        uid = f"uid-{name}"
        self.places[uid] = PodPlace(uid, "shop", name, f"sb-{name}", netns, f"kubepods/pod{uid}")

    def locate(self, uid: str) -> PodPlace | None:
        self.asked.append(uid)
        if self.fail:
            raise BpfshareError(self.fail)
        return self.places.get(uid)


def test_a_selector_picks_the_running_pods_of_its_namespace_by_label() -> None:
    inv = PodInventory(Runtime().locate)
    for body in (
        pod("web-0", labels={"app": "web"}),
        pod("web-1", labels={"app": "web"}, phase="Pending"),
        pod("web-2", labels={"app": "web"}, deleting=True),
        pod("db-0", labels={"app": "db"}),
        pod("web-other", labels={"app": "web"}, namespace="other"),
    ):
        inv.on_pod("ADDED", body)
    assert [p.name for p in inv.selected("shop", WEB)] == ["web-0"]
    assert [p.name for p in inv.selected("shop", NodeSelector())] == ["db-0", "web-0"]  # {} selects all


def test_what_wakes_the_programs() -> None:
    inv = PodInventory(Runtime().locate)
    assert inv.on_pod("ADDED", pod("web-0", labels={"app": "web"}, phase="Pending"))
    assert not inv.on_pod("MODIFIED", pod("web-0", labels={"app": "web"}, phase="Pending"))  # nothing new
    assert inv.on_pod("MODIFIED", pod("web-0", labels={"app": "web"}))  # Running
    assert not inv.on_pod("MODIFIED", pod("web-0", labels={"app": "web"}))  # a status update of no interest
    assert inv.on_pod("MODIFIED", pod("web-0", labels={"app": "api"}))  # relabelled: may leave a selection
    assert inv.on_pod("DELETED", pod("web-0"))
    assert not inv.on_pod("DELETED", pod("never-seen"))


def test_the_runtime_is_asked_once_per_sandbox() -> None:
    runtime = Runtime()
    runtime.add("web-0", "/var/run/netns/cni-a")
    inv = PodInventory(runtime.locate)
    inv.on_pod("ADDED", pod("web-0", labels={"app": "web"}))
    for _ in range(3):
        placed, waiting, _ = inv.placed("shop", WEB)
        assert [p.place.netns for p in placed] == ["/var/run/netns/cni-a"] and waiting == []
    assert runtime.asked == ["uid-web-0"]
    # A new sandbox (the pod's IP changed): asked again, the new namespace found.
    runtime.add("web-0", "/var/run/netns/cni-b")
    inv.on_pod("MODIFIED", pod("web-0", labels={"app": "web"}, ip="10.1.0.9"))
    assert [p.place.netns for p in inv.placed("shop", WEB)[0]] == ["/var/run/netns/cni-b"]
    assert runtime.asked == ["uid-web-0", "uid-web-0"]


def test_a_pod_the_runtime_cannot_place_yet_waits_with_a_message_naming_it() -> None:
    runtime = Runtime()
    inv = PodInventory(runtime.locate)
    inv.on_pod("ADDED", pod("web-0", labels={"app": "web"}))
    placed, waiting, failed = inv.placed("shop", WEB)
    assert placed == [] and failed == []
    assert waiting == ["pod shop/web-0: the container runtime has no ready sandbox for it yet"]
    runtime.fail = "container runtime at /run/containerd/containerd.sock: ListPodSandbox: UNAVAILABLE: gone"
    placed, waiting, failed = inv.placed("shop", WEB)
    assert placed == [] and waiting == [] and failed == [f"pod shop/web-0: {runtime.fail}"]
    runtime.fail = None
    runtime.add("web-0", "/var/run/netns/cni-a")
    assert [p.pod.name for p in inv.placed("shop", WEB)[0]] == ["web-0"]


class Listing:
    def __init__(self, items: list[dict[str, Any]], rv: str) -> None:
        self.data = json.dumps({"items": items, "metadata": {"resourceVersion": rv}})


class Core:
    def __init__(self, *listings: Listing) -> None:
        self.listings = list(listings)
        self.calls: list[dict[str, Any]] = []

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Listing:
        self.calls.append(kwargs)
        return self.listings.pop(0)


def test_the_watch_asks_for_this_nodes_pods_and_a_relist_delivers_deletions_it_missed() -> None:
    seen: list[tuple[str | None, dict[str, Any]]] = []
    core = Core(
        Listing([pod("web-0"), pod("web-1"), pod("elsewhere", node="worker-2")], "10"),
        Listing([pod("web-1"), pod("web-2")], "20"),
    )
    watch = PodWatch(core, NODE, lambda kind, body: seen.append((kind, body)))
    watch.relist()
    assert core.calls[0]["field_selector"] == f"spec.nodeName={NODE}"
    assert [(k, b["metadata"]["name"]) for k, b in seen] == [("ADDED", "web-0"), ("ADDED", "web-1")]
    seen.clear()
    watch.relist()  # web-0 went while the watch was away
    assert [(k, b["metadata"]["name"]) for k, b in seen] == [
        ("DELETED", "web-0"),
        ("MODIFIED", "web-1"),
        ("ADDED", "web-2"),
    ]
    assert seen[0][1] == {"metadata": {"name": "web-0", "namespace": "shop", "uid": "uid-web-0"}}
    assert watch.resource_version == "20"


@pytest.mark.parametrize("event", ["ADDED", "MODIFIED"])
def test_a_pod_without_a_uid_is_ignored(event: str) -> None:
    inv = PodInventory(Runtime().locate)
    body = pod("web-0")
    del body["metadata"]["uid"]
    assert not inv.on_pod(event, body) and inv.pods() == []
