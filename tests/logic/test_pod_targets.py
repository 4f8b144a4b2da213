"""``attach.*.pods``: BpfPrograms that attach to this node's selected pods, on the in-memory kernel.

The API (the CRD's rules, the parsed template, kubectl's column), the engine refusing a pods program
nobody bound to pods (``bpfshare apply``), and the agent's binding (agent/binding.py): each running
pod's interfaces in its own network namespace, or its cgroup, as pods come and go, with the pod named
in the state's attachments, in its messages and in events, and nothing attached twice after a restart.
"""

from __future__ import annotations

from typing import Any

import pytest

from bpfshare.agent.binding import bind_pods, selects_pods
from bpfshare.agent.pods import PodInventory
from bpfshare.api.resources import ResourceError, attach_summary
from bpfshare.api.status import Phase
from bpfshare.api.targets import TcTarget
from bpfshare.cri.pods import PodPlace
from bpfshare.errors import BpfshareError
from tests.logic.enginekit import Node, bpfmap, bpfprog, obj

WEB = {"namespace": "shop", "selector": {"matchLabels": {"app": "web"}}}


def tc_pods(**extra: Any) -> dict[str, Any]:
    return {"tc": {"pods": WEB, "direction": "ingress", **extra}}


def cgroup_pods() -> dict[str, Any]:
    return {"cgroup": {"pods": WEB, "type": "egress"}}


def pod_body(name: str, labels: dict[str, str] | None = None, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}", "labels": labels or {"app": "web"}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": phase, "podIPs": [{"ip": f"10.1.0.{len(name)}"}]},
    }


class Pods:
    """This node's pods (as the pod watch delivers them) and where the runtime says each one is."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.places: dict[str, PodPlace] = {}
        self.inventory = PodInventory(self.places.get)

    def run(self, name: str, *, interfaces: tuple[str, ...] = ("eth0",), host_network: bool = False) -> PodPlace:
        uid = f"uid-{name}"
        netns = "" if host_network else f"/var/run/netns/cni-{name}"
        place = PodPlace(uid, "shop", name, f"sandbox-{name}", netns, f"kubepods/besteffort/pod{uid}")
        for iface in interfaces:
            if netns:
                self.node.kernel.add_interface(iface, netns=netns)
        self.node.kernel.add_cgroup(place.cgroup)
        self.places[uid] = place
        self.inventory.on_pod("ADDED", pod_body(name))
        return place

    def delete(self, name: str) -> None:
        place = self.places.pop(f"uid-{name}")
        if place.netns:
            self.node.kernel.remove_interface("eth0", netns=place.netns)  # the namespace went with the pod
        self.node.kernel.remove_cgroup(place.cgroup)
        self.inventory.on_pod("DELETED", pod_body(name))


def counting(attach: dict[str, Any], name: str = "count-web") -> Any:
    program = "count_cgroup_egress" if "cgroup" in attach else "count_ingress"
    path = obj("cgroup_counter_mapdef.o") if "cgroup" in attach else None
    return bpfprog(name, program=program, path=path, attach=attach)


def reconcile(node: Node, pods: Pods, *programs: Any) -> Any:
    bound, notes = bind_pods(programs, pods.inventory)
    report = node.run([bpfmap()], bound)
    notes.apply(report)
    return report


def attachments(report: Any, name: str = "count-web") -> list[tuple[str | None, str]]:
    entry = report.programs[name]
    assert entry.phase is Phase.Ready, entry.message
    return sorted((a.pod, a.target) for a in entry.program.attachments)


def test_the_crd_defaults_interfaces_to_eth0_and_refuses_mixing_pods_with_fixed_targets() -> None:
    res = counting(tc_pods(priority=3))
    assert res.targets == () and res.pods is not None and not res.bound
    assert (res.pods.kind, res.pods.namespace, res.pods.interfaces, res.pods.priority) == ("tc", "shop", ("eth0",), 3)
    assert res.attach_kind == "tc"
    with pytest.raises(ResourceError, match="pods and networkNamespace are exclusive"):
        counting(tc_pods(networkNamespace="ns1"))
    with pytest.raises(ResourceError, match="exactly one of path and pods"):
        counting({"cgroup": {"pods": WEB, "path": "/x", "type": "egress"}})
    with pytest.raises(ResourceError, match=r"spec.attach.tc.interfaces: required, except with pods"):
        counting({"tc": {"direction": "ingress"}})
    with pytest.raises(ResourceError, match="namespace"):
        counting({"tc": {"pods": {"selector": {}}, "direction": "ingress"}})
    body = {"spec": {"attach": tc_pods()}}
    assert selects_pods(body) and not selects_pods({"spec": {"attach": {"tc": {"interfaces": ["eth0"]}}}})
    assert attach_summary(body) == "tc/ingress eth0 pods shop/app=web"
    assert attach_summary({"spec": {"attach": cgroup_pods()}}) == "cgroup/egress pods shop/app=web"


def test_without_the_agents_pods_a_pods_program_is_an_error_saying_why() -> None:
    node = Node()
    entry = node.run([bpfmap()], [counting(tc_pods())]).programs["count-web"]
    assert entry.phase is Phase.Error
    assert "spec.attach.tc.pods" in entry.message and "pods of namespace shop matching app=web" in entry.message


def test_each_selected_pods_eth0_gets_the_program_and_a_gone_pod_is_detached() -> None:
    node = Node()
    pods = Pods(node)
    a, b = pods.run("web-a"), pods.run("web-b")
    pods.inventory.on_pod("ADDED", pod_body("db-0", {"app": "db"}))  # not selected
    report = reconcile(node, pods, counting(tc_pods()))
    assert attachments(report) == [
        ("shop/web-a", f"tc:eth0:ingress@{a.netns}"),
        ("shop/web-b", f"tc:eth0:ingress@{b.netns}"),
    ]
    assert report.programs["count-web"].message.startswith("attached in 2 pod(s) of the pods of namespace shop")
    assert len(node.kernel.tc_filters()) == 2

    pods.delete("web-a")
    report = reconcile(node, pods, counting(tc_pods()))
    assert attachments(report) == [("shop/web-b", f"tc:eth0:ingress@{b.netns}")]
    assert len(node.kernel.tc_filters()) == 1


def test_a_restarted_agent_re_adopts_every_pods_attachment_and_attaches_nothing_twice() -> None:
    node = Node()
    pods = Pods(node)
    pods.run("web-a")
    pods.run("web-b")
    first = reconcile(node, pods, counting(cgroup_pods()))
    links = attachments(first)
    ids = sorted(a.link_id for a in first.programs["count-web"].program.attachments)
    node.restart_agent()
    again = reconcile(node, pods, counting(cgroup_pods()))
    assert attachments(again) == links
    assert sorted(a.link_id for a in again.programs["count-web"].program.attachments) == ids
    assert [e.reason for e in again.events if e.reason in ("Attached", "Loaded")] == []
    assert links[0] == ("shop/web-a", "cgroup:kubepods/besteffort/poduid-web-a:egress")


def test_a_selector_matching_nothing_here_is_ready_with_0_pods() -> None:
    node = Node()
    pods = Pods(node)
    entry = reconcile(node, pods, counting(tc_pods())).programs["count-web"]
    assert entry.phase is Phase.Ready and entry.program is not None and entry.program.attachments == ()
    assert entry.message == (
        "no running pod on this node among the pods of namespace shop matching app=web (Ready with 0 pods)"
    )


def test_a_pod_without_the_interface_is_an_error_naming_the_pod() -> None:
    node = Node()
    pods = Pods(node)
    pods.run("web-a", interfaces=("eth0",))
    report = reconcile(node, pods, counting(tc_pods(interfaces=["eth1"])))
    entry = report.programs["count-web"]
    assert entry.phase is Phase.Error
    assert "/var/run/netns" not in entry.message, entry.message
    # Said once, as the pod's namespace ("of pod" would repeat where the path was said twice).
    assert entry.message.count("pod shop/web-a") == 1 and "the network namespace of pod shop/web-a" in entry.message
    failed = [e for e in report.events if e.reason == "Failed"]
    assert failed and "pod shop/web-a" in failed[0].message


def test_a_host_network_pod_has_no_interfaces_of_its_own_but_its_cgroup() -> None:
    node = Node()
    pods = Pods(node)
    pods.run("web-host", host_network=True)
    tc_entry = reconcile(node, pods, counting(tc_pods())).programs["count-web"]
    assert tc_entry.phase is Phase.Ready and "pod shop/web-host: hostNetwork" in tc_entry.message
    cg = reconcile(node, pods, counting(cgroup_pods(), name="count-web-cg"))
    assert attachments(cg, "count-web-cg") == [("shop/web-host", "cgroup:kubepods/besteffort/poduid-web-host:egress")]


def test_pods_targets_compare_by_where_they_attach_not_by_pod_name() -> None:
    """The engine's records know targets by key; a pod's name is for people."""
    assert TcTarget("eth0", "ingress", "/var/run/netns/x", pod="shop/a") == TcTarget(
        "eth0", "ingress", "/var/run/netns/x"
    )


def test_a_runtime_that_cannot_be_asked_detaches_nothing() -> None:
    """After a restart the agent knows no places; the runtime away, it must not take the pods' absence
    from its answer for their going: the program fails the pass, naming the cause, and keeps them."""
    node = Node()
    pods = Pods(node)
    pods.run("web-a")
    reconcile(node, pods, counting(tc_pods()))
    assert len(node.kernel.tc_filters()) == 1

    node.restart_agent()
    failing = Pods(node)  # a new agent's inventory, with a runtime that does not answer

    def unreachable(uid: str) -> PodPlace | None:
        raise BpfshareError("container runtime at /run/containerd/containerd.sock: ListPodSandbox: UNAVAILABLE")

    failing.inventory = PodInventory(unreachable)
    failing.inventory.on_pod("ADDED", pod_body("web-a"))
    report = reconcile(node, failing, counting(tc_pods()))
    entry = report.programs["count-web"]
    assert entry.phase is Phase.Error
    assert entry.message.startswith("pod shop/web-a: container runtime at /run/containerd/containerd.sock")
    assert "attachments stay as they are" in entry.message
    assert len(node.kernel.tc_filters()) == 1, "a pass without the runtime's answer detached a pod"
    assert [e.message for e in report.events if e.reason == "Failed"] == [entry.message]


def test_the_ready_message_names_at_most_ten_pods_and_the_attachments_list_all() -> None:
    node = Node()
    pods = Pods(node)
    for i in range(12):
        pods.run(f"web-{i:02}")
    entry = reconcile(node, pods, counting(cgroup_pods())).programs["count-web"]
    assert len(entry.program.attachments) == 12
    assert entry.message.startswith("attached in 12 pod(s)") and entry.message.endswith("shop/web-09 and 2 more")


def test_a_pod_whose_namespace_went_before_the_watch_said_so_holds_up_no_other_pod() -> None:
    """The kubelet tears a deleted pod's sandbox down while the agent's pod watch still lists it:
    its netns and cgroup are gone. The next pod to start is attached in that same pass, and the
    program stays Ready; the gone pod's targets are neither attached nor reported."""
    node = Node()
    pods = Pods(node)
    pods.run("web-a")
    tc, cg = counting(tc_pods(), "count-web"), counting(cgroup_pods(), "count-web-cg")
    reconcile(node, pods, tc, cg)
    gone = pods.places["uid-web-a"]
    node.kernel.remove_interface("eth0", netns=gone.netns)  # the sandbox torn down; the pod still listed
    node.kernel.remove_cgroup(gone.cgroup)
    pods.run("web-b")
    report = reconcile(node, pods, tc, cg)
    for name in ("count-web", "count-web-cg"):
        assert [pod for pod, _ in attachments(report, name)] == ["shop/web-b"]
    # Once the watch says so too, nothing changes on the node.
    pods.inventory.on_pod("DELETED", pod_body("web-a"))
    before = list(node.kernel.calls)
    report = reconcile(node, pods, tc, cg)
    assert node.kernel.calls == before
    assert [pod for pod, _ in attachments(report)] == ["shop/web-b"]
