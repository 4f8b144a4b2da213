"""``attach.*.pods`` on the real node: a process agent for this node (the node's containerd as its
container runtime) attaches a tc program to eth0 inside every selected pod's network namespace and a
cgroup program to every selected pod's cgroup, as pods come and go; a restarted agent re-adopts them
with nothing attached twice; a selector that matches nothing is Ready with 0 pods."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpfshare.controlplane.agents import Agent, start_agent
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import install_crds, poll
from bpfshare.cri.client import CriClient
from bpfshare.kernel.netns import enter_netns
from tests.fixtures.bpftool import bpftool_json, require_bpftool
from tests.fixtures.http import http_get
from tests.node.pod_programs import (
    attached_pods,
    counter,
    pod_cgroup_programs,
    pod_tc_filters,
    remove_resources,
    resources,
    run_pods,
    state,
)

pytestmark = [pytest.mark.kernel, pytest.mark.cluster, pytest.mark.node]


@pytest.fixture
def agent(real_node: ControlPlane, tmp_path: Path) -> Iterator[Agent]:
    cp = real_node
    assert cp.containerd_address is not None
    install_crds(cp.kubectl)
    started = start_agent(
        cp.node,
        cp.kubeconfig,
        tmp_path / "agent.log",
        metrics=True,  # and /readyz: the first full pass done
        env={"BPFSHARE_RUNTIME_ENDPOINT": str(cp.containerd_address)},
    )
    try:
        yield started
    finally:
        remove_resources(cp)
        cp.kubectl("delete", "pods", "-l", "app in (pt-web,pt-db)", "--wait=true", "--timeout=60s", check=False)
        started.close()


def test_programs_follow_the_selected_pods(real_node: ControlPlane, agent: Agent) -> None:
    require_bpftool()
    cp = real_node
    assert cp.containerd_address is not None
    pods = run_pods(cp, "pt-a", "pt-b")
    run_pods(cp, "pt-db", app="pt-db")
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": resources()}))
    both = ["default/pt-a", "default/pt-b"]
    poll(lambda: attached_pods(cp, "pt-tc") == both, "the tc program in both selected pods")
    poll(lambda: attached_pods(cp, "pt-cgroup") == both, "the cgroup program in both selected pods")
    tc_state, cg_state = state(cp, "pt-tc"), state(cp, "pt-cgroup")
    assert tc_state is not None and cg_state is not None
    assert tc_state["message"].startswith("attached in 2 pod(s)")

    with CriClient(cp.containerd_address) as cri:
        places = {n: cri.place_of_pod(p["metadata"]["uid"]) for n, p in pods.items()}
    for name, place in places.items():
        assert place is not None
        # The filter is on eth0 inside the pod's own namespace, and the cgroup program on its cgroup.
        assert pod_tc_filters(place) == [tc_state["programId"]], name
        assert pod_cgroup_programs(place) == [cg_state["programId"]], name

    # Traffic into pod pt-a's eth0 is counted by its filter in the shared map.
    pin = Path(agent.pin_root) / "maps" / "pt-counts"
    before = counter(pin, 0)
    ip = pods["pt-a"]["status"]["podIP"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(5):
            sock.sendto(b"bpfshare", (ip, 9))
    poll(lambda: counter(pin, 0) >= before + 5, "pt-a's filter to count 5 packets", timeout=10)

    # A pod that stops matching, and one that goes: their attachments go with them.
    cp.kubectl("label", "pod", "pt-b", "app=pt-db", "--overwrite")
    poll(lambda: attached_pods(cp, "pt-tc") == ["default/pt-a"], "pt-b to leave the tc program's pods")
    with enter_netns(places["pt-b"].netns):  # type: ignore[union-attr]
        assert not [f for e in bpftool_json("net", "show", "dev", "eth0") for f in e.get("tc", [])]  # type: ignore[union-attr]
    cp.kubectl("delete", "pod", "pt-a", "--wait=false")
    poll(
        lambda: attached_pods(cp, "pt-cgroup") == [], "pt-a (deleted) and pt-b (relabelled) to leave the cgroup program"
    )


def test_a_restarted_agent_re_adopts_pod_attachments_and_attaches_nothing_twice(
    real_node: ControlPlane, agent: Agent
) -> None:
    require_bpftool()
    cp = real_node
    run_pods(cp, "pt-a")
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": resources()}))
    poll(lambda: attached_pods(cp, "pt-tc") == ["default/pt-a"], "the tc program in pt-a")
    poll(lambda: attached_pods(cp, "pt-cgroup") == ["default/pt-a"], "the cgroup program in pt-a")
    before = {p: state(cp, p) for p in ("pt-tc", "pt-cgroup")}
    agent.restart()
    ready = f"http://127.0.0.1:{agent.metrics_port}/readyz"
    poll(lambda: http_get(ready)[0] == 200, "the restarted agent's first full pass (/readyz)")
    after = {p: state(cp, p) for p in before}
    for name in before:
        assert after[name]["programId"] == before[name]["programId"]  # type: ignore[index]
        assert after[name]["attachments"] == before[name]["attachments"]  # type: ignore[index]
    # One filter in the pod's namespace and one cgroup program on its cgroup, the same as before.
    uid = json.loads(cp.kubectl("get", "pod", "pt-a", "-o", "json").stdout)["metadata"]["uid"]
    assert cp.containerd_address is not None
    with CriClient(cp.containerd_address) as cri:
        place = cri.place_of_pod(uid)
    assert place is not None
    assert pod_tc_filters(place, kind="") == [before["pt-tc"]["programId"]]  # type: ignore[index]
    assert pod_cgroup_programs(place, attach_type="") == [before["pt-cgroup"]["programId"]]  # type: ignore[index]


def test_a_selector_matching_nothing_on_the_node_is_ready_with_0_pods(real_node: ControlPlane, agent: Agent) -> None:
    cp = real_node
    nobody = {"namespace": "default", "selector": {"matchLabels": {"app": "pt-nobody"}}}
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": resources(nobody)}))
    status = poll(lambda: state(cp, "pt-tc"), "pt-tc Ready")
    assert not status.get("attachments")
    assert "Ready with 0 pods" in status["message"]
