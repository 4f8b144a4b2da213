"""``attach.*.pods`` on the real node: a process agent for this node (the node's containerd as its
container runtime) attaches a tc program to eth0 inside every selected pod's network namespace and a
cgroup program to every selected pod's cgroup, as pods come and go; a restarted agent re-adopts them
with nothing attached twice; a selector that matches nothing is Ready with 0 pods."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpfshare.controlplane.agents import Agent, start_agent
from bpfshare.controlplane.pause import SANDBOX_IMAGE
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import install_crds, poll
from bpfshare.cri.client import CriClient
from bpfshare.kernel.cgroup import cgroup2_root
from bpfshare.kernel.maps import Map
from bpfshare.kernel.netns import enter_netns
from tests.fixtures.bpftool import bpftool_json, require_bpftool
from tests.fixtures.http import http_get
from tests.fixtures.kernel import BPF_DIR

pytestmark = [pytest.mark.kernel, pytest.mark.cluster, pytest.mark.node]

API = "bpfshare.io/v1alpha1"
SELECT = {"namespace": "default", "selector": {"matchLabels": {"app": "pt-web"}}}


def pod(name: str, app: str = "pt-web") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {
            "containers": [{"name": "sleep", "image": SANDBOX_IMAGE, "imagePullPolicy": "Never"}],
            "terminationGracePeriodSeconds": 1,
        },
    }


def resources(selector: dict[str, Any] = SELECT) -> list[dict[str, Any]]:
    def program(name: str, obj: str, fn: str, attach: dict[str, Any]) -> dict[str, Any]:
        spec = {"bytecode": {"path": str(BPF_DIR / obj)}, "program": fn, "attach": attach,
                "maps": {"shared_counts": "pt-counts"}}  # fmt: skip
        return {"apiVersion": API, "kind": "BpfProgram", "metadata": {"name": name}, "spec": spec}

    return [
        {"apiVersion": API, "kind": "BpfMap", "metadata": {"name": "pt-counts"},
         "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4, "reclaimPolicy": "Delete"}},
        program("pt-tc", "flow_counter.o", "count_ingress", {"tc": {"pods": selector, "direction": "ingress"}}),
        program("pt-cgroup", "cgroup_counter_mapdef.o", "count_cgroup_egress",
                {"cgroup": {"pods": selector, "type": "egress"}}),
    ]  # fmt: skip


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


def remove_resources(cp: ControlPlane) -> None:
    """Delete the test's resources; once the agent released them (their states are gone), drop the
    controller's finalizer, which no controller runs here to remove."""
    names = ["bpfprograms/pt-tc", "bpfprograms/pt-cgroup", "bpfmaps/pt-counts"]
    cp.kubectl("delete", *names, "--ignore-not-found", "--wait=false", check=False)

    def released() -> bool:
        programs = cp.kubectl("get", "bpfprogramstates", "-l", "bpfshare.io/program in (pt-tc,pt-cgroup)", "-o", "name")
        maps = cp.kubectl("get", "bpfmapstates", "-l", "bpfshare.io/map=pt-counts", "-o", "name")
        return not programs.stdout.strip() and not maps.stdout.strip()

    poll(released, "the agent to release the test's resources")
    for name in names:
        cp.kubectl("patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)


def state(cp: ControlPlane, program: str) -> dict[str, Any] | None:
    got = cp.kubectl("get", "bpfprogramstates", "-l", f"bpfshare.io/program={program}", "-o", "json").stdout
    items = json.loads(got)["items"]
    return items[0]["status"] if items and items[0].get("status", {}).get("phase") == "Ready" else None


def attached_pods(cp: ControlPlane, program: str) -> list[str] | None:
    status = state(cp, program)
    return None if status is None else sorted(a.get("pod", "") for a in status.get("attachments") or [])


def run_pods(cp: ControlPlane, *names: str, app: str = "pt-web") -> dict[str, dict[str, Any]]:
    for name in names:
        cp.kubectl("apply", "-f", "-", input=json.dumps(pod(name, app)))

    def running() -> dict[str, dict[str, Any]] | None:
        docs = {n: json.loads(cp.kubectl("get", "pod", n, "-o", "json").stdout) for n in names}
        return docs if all(d["status"].get("phase") == "Running" for d in docs.values()) else None

    return poll(running, f"pods {', '.join(names)} to run")


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
        # The filter is on eth0 inside the pod's own namespace ...
        with enter_netns(place.netns):
            shown = bpftool_json("net", "show", "dev", "eth0")
        assert isinstance(shown, list)
        filters = [f["id"] for e in shown for f in e.get("tc", []) if f.get("kind", "").endswith("ingress")]
        assert filters == [tc_state["programId"]], f"{name}: {shown}"
        # ... and the cgroup program on the pod's own cgroup.
        attached = bpftool_json("cgroup", "show", str(cgroup2_root() / place.cgroup))
        assert isinstance(attached, list)
        assert [p["id"] for p in attached if p.get("attach_type") == "cgroup_inet_egress"] == [cg_state["programId"]]

    # Traffic into pod pt-a's eth0 is counted by its filter in the shared map.
    pin = Path(agent.pin_root) / "maps" / "pt-counts"
    before = _counter(pin, 0)
    ip = pods["pt-a"]["status"]["podIP"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(5):
            sock.sendto(b"bpfshare", (ip, 9))
    poll(lambda: _counter(pin, 0) >= before + 5, "pt-a's filter to count 5 packets", timeout=10)

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
    with enter_netns(place.netns):
        shown = bpftool_json("net", "show", "dev", "eth0")
    assert isinstance(shown, list)
    assert [f["id"] for e in shown for f in e.get("tc", [])] == [before["pt-tc"]["programId"]]  # type: ignore[index]
    attached = bpftool_json("cgroup", "show", str(cgroup2_root() / place.cgroup))
    assert isinstance(attached, list)
    assert [p["id"] for p in attached] == [before["pt-cgroup"]["programId"]]  # type: ignore[index]


def test_a_selector_matching_nothing_on_the_node_is_ready_with_0_pods(real_node: ControlPlane, agent: Agent) -> None:
    cp = real_node
    nobody = {"namespace": "default", "selector": {"matchLabels": {"app": "pt-nobody"}}}
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": resources(nobody)}))
    status = poll(lambda: state(cp, "pt-tc"), "pt-tc Ready")
    assert not status.get("attachments")
    assert "Ready with 0 pods" in status["message"]


def _counter(pin: Path, index: int) -> int:
    with Map.from_pin(pin) as live:
        return int(struct.unpack("<Q", live.lookup(struct.pack("<I", index)) or bytes(8))[0])
