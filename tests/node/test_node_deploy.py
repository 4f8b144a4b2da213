"""bpfshare installed on the real node as a user installs it: the image built from the Dockerfile and
imported into the node's containerd (``cluster image``), ``kubectl apply -k deploy/`` (with the
node's runtime socket path patched in: node_deploy.py), the agent DaemonSet and the controller
Deployment running as pods under kubelet and containerd.

Then, through the pod-run agent: the seed scenario (one BpfMap shared by a tc program and a cgroup
program whose object declares the map as a legacy ``bpf_map_def``), checked with bpftool and with
traffic; programs for pods (``attach.*.pods``) in the selected pods' namespaces and cgroups; an agent
pod deleted and replaced keeps the program IDs and attaches nothing twice; ``kubectl logs``, the
metrics endpoint, and the probes (``/healthz`` alive, ``/readyz`` synced); and the state objects of a
deleted BpfMap garbage-collected by kube-controller-manager through their owner references, while its
node's agent was away.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from bpfshare.controlplane import node_deploy
from bpfshare.controlplane.demo import (
    CGROUP,
    IF_B,
    INSTALLED_BPF_DIR,
    MAP_NAME,
    NS_B,
    example_resources,
    make_traffic,
    network,
    only_demo,
    read_counters,
)
from bpfshare.controlplane.node_demo import HOST_PIN_ROOT
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import key_of, kubectl_getter, poll, wait_cluster_ready, wait_ready
from bpfshare.cri.client import CriClient
from bpfshare.kernel.cgroup import cgroup2_root
from tests.fixtures.bpftool import bpftool_json, require_bpftool
from tests.fixtures.http import http_get
from tests.node import pod_programs
from tests.node.conftest import host_pin_root_removed_after

pytestmark = [pytest.mark.kernel, pytest.mark.cluster, pytest.mark.node]

NS = node_deploy.NAMESPACE
AGENT = f"app.kubernetes.io/name={node_deploy.AGENT_DAEMONSET}"
CONTROLLER = f"app.kubernetes.io/name={node_deploy.CONTROLLER_DEPLOYMENT}"
HEALTHZ = "http://127.0.0.1:9476/healthz"  # hostNetwork: the agent's ports are the node's
METRICS = "http://127.0.0.1:9477"
DOCS = example_resources(INSTALLED_BPF_DIR)  # the objects as the image holds them
KEYS = [key_of(doc) for doc in DOCS]
NAMES = [f"{plural}/{name}" for plural, name in KEYS]


def get_json(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def installed(real_node: ControlPlane) -> Iterator[ControlPlane]:
    """The image built and imported, deploy/ applied and rolled out; all of it removed after."""
    cp = real_node
    assert cp.containerd_address is not None
    node_deploy.install_image(cp.containerd_address)
    with host_pin_root_removed_after():
        try:
            node_deploy.deploy(cp.kubectl, runtime_socket=cp.containerd_address)
            yield cp
        finally:
            cp.kubectl("delete", *reversed(NAMES), "--ignore-not-found", "--timeout=60s", check=False)
            node_deploy.undeploy(cp.kubectl)


@pytest.fixture(scope="module")
def scenario(installed: ControlPlane) -> Iterator[ControlPlane]:
    """The examples applied on the demo's veth pair and cgroup, until Ready on the node and in the cluster."""
    cp = installed
    with only_demo(), network(lambda _: None):
        cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": DOCS}))
        get = kubectl_getter(cp.kubectl)
        try:
            wait_ready(get, KEYS, [cp.node], timeout=90.0)
            wait_cluster_ready(get, KEYS, timeout=60.0)
            yield cp
        finally:
            cp.kubectl("delete", *reversed(NAMES), "--ignore-not-found", "--timeout=60s", check=False)


def program_states(cp: ControlPlane) -> dict[str, dict[str, Any]]:
    items = get_json(cp, "bpfprogramstates", "-l", f"bpfshare.io/node={cp.node}")["items"]
    return {item["spec"]["program"]: item for item in items}


def map_id(cp: ControlPlane) -> int:
    state = get_json(cp, "bpfmapstates", "-l", f"bpfshare.io/map={MAP_NAME}")["items"][0]
    return int(state["status"]["mapId"])


def tc_filters() -> list[dict[str, Any]]:
    """bpftool's view of the BPF filters on the demo veth's ingress, inside its namespace."""
    from bpfshare.kernel.netns import enter_netns

    with enter_netns(NS_B):
        shown = bpftool_json("net", "show", "dev", IF_B)
    assert isinstance(shown, list)
    return [f for entry in shown for f in entry.get("tc", []) if f.get("kind", "").endswith("ingress")]


def cgroup_programs() -> list[dict[str, Any]]:
    shown = bpftool_json("cgroup", "show", str(cgroup2_root() / CGROUP))
    assert isinstance(shown, list)
    return [p for p in shown if p.get("attach_type") == "cgroup_inet_egress"]


def test_agent_daemonset_and_controller_deployment_are_ready(installed: ControlPlane) -> None:
    cp = installed
    ds = get_json(cp, "-n", NS, "daemonset", node_deploy.AGENT_DAEMONSET)["status"]
    assert ds["desiredNumberScheduled"] == ds["numberReady"] == ds["updatedNumberScheduled"] == 1, ds
    deployment = get_json(cp, "-n", NS, "deployment", node_deploy.CONTROLLER_DEPLOYMENT)
    assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"] == 2, deployment["status"]
    # The image is the one `cluster image` built, not pulled: the reference deploy/ names.
    pod = node_deploy.agent_pod(cp.kubectl)
    images = {c["name"]: c["image"] for c in pod["status"]["containerStatuses"]}
    assert images["agent"] == "docker.io/bpfshare/agent:0.1.0"
    assert pod["spec"]["nodeName"] == cp.node


def test_probes_tell_alive_from_synced(installed: ControlPlane) -> None:
    cp = installed
    pod = node_deploy.agent_pod(cp.kubectl)
    agent = next(c for c in pod["spec"]["containers"] if c["name"] == "agent")
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    status, body = http_get(HEALTHZ)
    assert status == 200, body
    status, body = http_get(f"{METRICS}/readyz")
    assert status == 200, body
    for controller in node_deploy.pods(cp.kubectl, CONTROLLER):
        container = controller["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_seed_scenario_through_the_pod_run_agent(scenario: ControlPlane) -> None:
    require_bpftool()
    cp = scenario
    shared = map_id(cp)
    states = program_states(cp)
    assert set(states) == {"count-ingress", "count-cgroup-egress"}
    for name, state in states.items():
        assert state["status"]["maps"] == {"shared_counts": shared}, name
        shown = bpftool_json("prog", "show", "id", str(state["status"]["programId"]))
        assert isinstance(shown, dict)
        assert shown["map_ids"] == [shared], f"{name} uses maps {shown['map_ids']}, not the shared {shared}"
    # Attached where the resources say, once each.
    assert [f["id"] for f in tc_filters()] == [states["count-ingress"]["status"]["programId"]]
    assert [p["id"] for p in cgroup_programs()] == [states["count-cgroup-egress"]["status"]["programId"]]
    # Traffic through both, counted in the one map the agent pinned on the host.
    before = read_counters(HOST_PIN_ROOT / "maps" / MAP_NAME)
    make_traffic(packets=10)
    after = read_counters(HOST_PIN_ROOT / "maps" / MAP_NAME)
    assert after[0] - before[0] >= 10, f"tc ingress counted {after[0] - before[0]} of 10 packets"
    assert after[3] - before[3] >= 10, f"cgroup egress counted {after[3] - before[3]} of 10 packets"


def test_a_replaced_agent_pod_keeps_program_ids_and_attaches_nothing_twice(scenario: ControlPlane) -> None:
    require_bpftool()
    cp = scenario
    old = node_deploy.agent_pod(cp.kubectl)
    ids = {name: s["status"]["programId"] for name, s in program_states(cp).items()}
    shared = map_id(cp)
    counted = read_counters(HOST_PIN_ROOT / "maps" / MAP_NAME)

    cp.kubectl("-n", NS, "delete", "pod", old["metadata"]["name"], "--wait=true", "--timeout=90s")
    new = node_deploy.agent_pod(cp.kubectl, timeout=120.0)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    # Ready means the new agent has reconciled everything once (its /readyz); by then it re-adopted.
    wait_ready(kubectl_getter(cp.kubectl), KEYS, [cp.node], timeout=60.0)
    assert {name: s["status"]["programId"] for name, s in program_states(cp).items()} == ids
    assert map_id(cp) == shared
    assert [f["id"] for f in tc_filters()] == [ids["count-ingress"]]
    assert [p["id"] for p in cgroup_programs()] == [ids["count-cgroup-egress"]]
    # The map's contents survived the agent's restart, and traffic is still counted.
    make_traffic(packets=5)
    after = read_counters(HOST_PIN_ROOT / "maps" / MAP_NAME)
    assert after[0] >= counted[0] + 5 and after[3] >= counted[3] + 5, (counted, after)


def test_kubectl_logs_and_metrics(scenario: ControlPlane) -> None:
    cp = scenario
    logs = cp.kubectl("-n", NS, "logs", f"daemonset/{node_deploy.AGENT_DAEMONSET}", "-c", "agent", check=False)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.strip(), "the agent logged nothing"
    controller = cp.kubectl("-n", NS, "logs", f"deployment/{node_deploy.CONTROLLER_DEPLOYMENT}", check=False)
    assert controller.returncode == 0, controller.stderr
    status, text = http_get(f"{METRICS}/metrics")
    assert status == 200, text
    assert 'bpfshare_resources{kind="BpfProgram",phase="Ready"} 2.0' in text
    assert 'bpfshare_resources{kind="BpfMap",phase="Ready"} 1.0' in text
    assert f'bpfshare_agent_info{{node="{cp.node}"' in text


def test_pods_programs_through_the_pod_run_agent(installed: ControlPlane) -> None:
    """attach.*.pods by the DaemonSet's agent: it lists and watches its node's pods (its RBAC), asks the
    runtime through the socket mounted read-only, enters the pods' network namespaces through
    /run/netns, and counts traffic into a selected pod in the map it pinned on the host."""
    require_bpftool()
    cp = installed
    assert cp.containerd_address is not None
    agent = node_deploy.agent_pod(cp.kubectl)
    sockets = [v for v in agent["spec"]["volumes"] if v["name"] == "runtime-socket"]
    assert [v["hostPath"]["path"] for v in sockets] == [str(cp.containerd_address)]
    docs = pod_programs.resources(bpf_dir=INSTALLED_BPF_DIR)
    try:
        pods = pod_programs.run_pods(cp, "pt-a", "pt-b")
        pod_programs.run_pods(cp, "pt-db", app="pt-db")
        cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        both = ["default/pt-a", "default/pt-b"]
        for program in ("pt-tc", "pt-cgroup"):
            poll(lambda p=program: pod_programs.attached_pods(cp, p) == both, f"{program} in both selected pods")
        tc, cg = pod_programs.state(cp, "pt-tc"), pod_programs.state(cp, "pt-cgroup")
        assert tc is not None and cg is not None
        with CriClient(cp.containerd_address) as cri:
            places = {name: cri.place_of_pod(doc["metadata"]["uid"]) for name, doc in pods.items()}
        for name, place in places.items():
            assert place is not None and place.netns.startswith(("/run/netns/", "/var/run/netns/")), place
            assert pod_programs.pod_tc_filters(place) == [tc["programId"]], name
            assert pod_programs.pod_cgroup_programs(place) == [cg["programId"]], name
        # The controller's cluster view counts the node's pods programs Ready.
        wait_cluster_ready(kubectl_getter(cp.kubectl), [("bpfprograms", "pt-tc"), ("bpfprograms", "pt-cgroup")])
        pin = HOST_PIN_ROOT / "maps" / "pt-counts"
        before = pod_programs.counter(pin, 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(5):
                sock.sendto(b"bpfshare", (pods["pt-a"]["status"]["podIP"], 9))
        poll(lambda: pod_programs.counter(pin, 0) >= before + 5, "pt-a's filter to count 5 packets", timeout=10)
        # A deleted pod leaves both programs.
        cp.kubectl("delete", "pod", "pt-b", "--wait=false")
        for program in ("pt-tc", "pt-cgroup"):
            poll(lambda p=program: pod_programs.attached_pods(cp, p) == ["default/pt-a"], f"pt-b to leave {program}")
    finally:
        pod_programs.remove_resources(cp)
        cp.kubectl("delete", "pods", "-l", "app in (pt-web,pt-db)", "--wait=true", "--timeout=60s", check=False)


def test_a_deleted_bpfmaps_states_are_garbage_collected(installed: ControlPlane) -> None:
    """The agent away (its DaemonSet selects no node), the BpfMap deleted and, as an administrator does
    for a node that will not come back soon, released by hand (its finalizer removed): nothing but
    kube-controller-manager's garbage collector, following the state's owner reference, deletes the
    state. The agent's finalizer holds it until the agent returns; the map stays pinned, its contents
    kept: the agent never saw the BpfMap that said ``reclaimPolicy: Delete`` being deleted."""
    cp = installed
    name = "gc-probe"
    doc = {
        "apiVersion": DOCS[0]["apiVersion"],
        "kind": "BpfMap",
        "metadata": {"name": name},
        "spec": {"type": "Hash", "keySize": 4, "valueSize": 4, "maxEntries": 8, "reclaimPolicy": "Delete"},
    }
    state_name = f"bpfmapstates/{name}.{cp.node}"
    pin = HOST_PIN_ROOT / "maps" / name
    away = '{"spec":{"template":{"spec":{"nodeSelector":{"bpfshare.io/test-agent-away":"true"}}}}}'
    back = '{"spec":{"template":{"spec":{"nodeSelector":null}}}}'
    cp.kubectl("apply", "-f", "-", input=json.dumps(doc))
    try:
        wait_ready(kubectl_getter(cp.kubectl), [("bpfmaps", name)], [cp.node], timeout=60.0)
        state = get_json(cp, state_name)
        owner = get_json(cp, "bpfmaps", name)
        assert [r["uid"] for r in state["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]
        assert pin.exists()

        cp.kubectl("-n", NS, "patch", "daemonset", node_deploy.AGENT_DAEMONSET, "--type=merge", "-p", away)
        poll(lambda: not node_deploy.pods(cp.kubectl, AGENT), "the agent pod to go", timeout=120.0)
        cp.kubectl("delete", "bpfmaps", name, "--wait=false")
        cp.kubectl("patch", "bpfmaps", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        poll(lambda: cp.kubectl("get", "bpfmaps", name, check=False).returncode != 0, "the BpfMap to go")
        deleted = poll(
            lambda: get_json(cp, state_name)["metadata"].get("deletionTimestamp"),
            "the garbage collector to delete the orphaned state",
        )
        assert deleted
        assert pin.exists(), "the map must stay pinned while no agent has released it"
    finally:
        cp.kubectl("-n", NS, "patch", "daemonset", node_deploy.AGENT_DAEMONSET, "--type=merge", "-p", back)
    node_deploy.agent_pod(cp.kubectl, timeout=120.0)
    poll(lambda: cp.kubectl("get", state_name, check=False).returncode != 0, "the returned agent to release the state")
    assert pin.exists(), "a map whose deletion no agent saw must keep its contents"
    pin.unlink()  # the administrator's part, as docs/troubleshooting.md says
