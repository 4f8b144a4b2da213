"""The kopf agent against the real kube-apiserver and the real kernel: it reports in its own node's
state objects and writes nothing to the BpfMaps and BpfPrograms (there is no controller here, so
nothing holds a deleted resource: the agents release what disappears)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from bpfshare.api.resources import MAP_PLURAL as MAPS
from bpfshare.api.resources import PROGRAM_PLURAL as PROGS
from bpfshare.api.states import AGENT_FINALIZER, CONTROLLER_FINALIZER, state_name
from tests.fixtures.agents import Cluster
from tests.fixtures.netenv import NetnsPair
from tests.integration.test_apply import bpfmap, cgroup_program, tc_program
from tests.integration.test_sharing import CG_EGRESS, TC_INGRESS, bpftool, counters, filters_on, send_from_cgroup

pytestmark = [pytest.mark.kernel, pytest.mark.cluster]


def test_kubectl_apply_shares_one_map_and_reports_ids(
    cluster: Cluster, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    node = cluster.add_node()
    agent = cluster.start_agent(node)
    m, tc, cg = cluster.apply_sharing(node, bpf_objects, netns_pair, cgroup_dir)
    assert bpftool("map", "show", "pinned", m["pinPath"])["id"] == m["mapId"]  # type: ignore[index]
    assert Path(m["pinPath"]).is_relative_to(agent.pin_root)
    assert tc["maps"] == {"shared_counts": m["mapId"]} == cg["maps"]
    for prog in (tc, cg):
        assert bpftool("prog", "show", "id", str(prog["programId"]))["map_ids"] == [m["mapId"]]  # type: ignore[index]
    assert cluster.wait(
        lambda: (
            sorted((cluster.entry(MAPS, "flow-counts", node) or {}).get("usedBy", []))
            == ["count-cgroup", "count-ingress"]
        ),
        "usedBy on the map",
    )

    # Nothing written to the shared objects: no finalizer, no status, no field of the agent's.
    def managers(ref: str) -> set[str]:
        out = cluster.kubectl("get", ref, "-o", "json", "--show-managed-fields").stdout
        return {f["manager"] for f in json.loads(out)["metadata"]["managedFields"]}

    for plural, name in ((MAPS, "flow-counts"), (PROGS, "count-ingress"), (PROGS, "count-cgroup")):
        obj = cluster.get(plural, name) or {}
        # (the CRD's default status, observedGeneration 0, is the API server's: "not yet looked at")
        assert not obj["metadata"].get("finalizers") and obj.get("status") in (None, {"observedGeneration": 0}), obj
        assert not any(m.startswith("bpfshare") for m in managers(f"{plural}/{name}"))
        assert not any(k.startswith("kopf") for k in (obj["metadata"].get("annotations") or {}))
        state = cluster.state(plural, name, node) or {}
        assert state["metadata"]["finalizers"] == [AGENT_FINALIZER]
        assert [(r["kind"], r["name"], r["uid"]) for r in state["metadata"]["ownerReferences"]] == [
            (obj["kind"], name, obj["metadata"]["uid"])
        ]
        assert managers(f"{state['kind'].lower()}/{state['metadata']['name']}") == {"bpfshare-agent"}
    obj = cluster.get(PROGS, "count-ingress") or {}
    assert tc["observedGeneration"] == obj["metadata"]["generation"]

    netns_pair.send_udp(5)
    send_from_cgroup(cgroup_dir, 3)
    values = counters(Path(m["pinPath"]))
    assert values[TC_INGRESS] >= 5 and values[CG_EGRESS] == 3

    # kubectl get of the states is the node view: the IDs, by label.
    maps_table = cluster.kubectl("get", "bpfmapstates", "-l", "bpfshare.io/map=flow-counts").stdout.splitlines()
    assert maps_table[0].split() == ["NAME", "MAP", "NODE", "MAPID", "PHASE", "AGE"]
    assert maps_table[1].split()[:5] == [state_name("flow-counts", node), "flow-counts", node, str(m["mapId"]), "Ready"]
    progs_table = cluster.kubectl("get", "bpfprogramstates", "-l", f"bpfshare.io/node={node}").stdout
    assert str(tc["programId"]) in progs_table and str(cg["programId"]) in progs_table
    assert f'{{"shared_counts":{m["mapId"]}}}' in progs_table and "tc:" in progs_table

    # Events were posted for the loads.
    events = cluster.kubectl(
        "get", "events", "-n", "default", "--field-selector", "involvedObject.name=count-ingress", "-o", "name"
    ).stdout
    assert events.strip()


def test_idle_agent_writes_nothing(cluster: Cluster, bpf_objects, cgroup_dir: Path) -> None:
    node = cluster.add_node()
    cluster.start_agent(node)  # resync every 2 s
    cluster.apply(bpfmap(), cgroup_program(bpf_objects["cgroup_counter_mapdef"], cgroup_dir))
    cluster.wait_phase(PROGS, "count-cgroup", node)
    cluster.wait(lambda: (cluster.entry(MAPS, "flow-counts", node) or {}).get("usedBy") == ["count-cgroup"], "usedBy")
    time.sleep(2.5)
    keys = ((MAPS, "flow-counts"), (PROGS, "count-cgroup"))

    def versions() -> dict[tuple[str, str, str], str]:
        resources = {(p, n, ""): (cluster.get(p, n) or {})["metadata"]["resourceVersion"] for p, n in keys}
        states = {(p, n, node): (cluster.state(p, n, node) or {})["metadata"]["resourceVersion"] for p, n in keys}
        return resources | states

    before = versions()
    time.sleep(5)  # two resync passes or more
    assert versions() == before


def test_two_agents_share_resources_each_with_its_own_state(cluster: Cluster, bpf_objects, cgroup_dir: Path) -> None:
    node_a = cluster.add_node({"role": "edge"})
    node_b = cluster.add_node({"role": "core"})
    agent_a, agent_b = cluster.start_agent(node_a), cluster.start_agent(node_b)
    edge_only = cgroup_program(
        bpf_objects["flow_counter"], cgroup_dir, name="edge-only", nodeSelector={"matchLabels": {"role": "edge"}}
    )
    cluster.apply(bpfmap(), cgroup_program(bpf_objects["cgroup_counter_mapdef"], cgroup_dir), edge_only)
    entries = {n: cluster.wait_phase(PROGS, "count-cgroup", n) for n in (node_a, node_b)}
    maps = {n: cluster.wait_phase(MAPS, "flow-counts", n) for n in (node_a, node_b)}
    cluster.wait_phase(PROGS, "edge-only", node_a)
    # Each node has its own map (its own pin root) and its own program; neither entry lost.
    assert maps[node_a]["mapId"] != maps[node_b]["mapId"]
    assert Path(maps[node_a]["pinPath"]).is_relative_to(agent_a.pin_root)
    assert Path(maps[node_b]["pinPath"]).is_relative_to(agent_b.pin_root)
    assert entries[node_a]["programId"] != entries[node_b]["programId"]
    assert entries[node_a]["maps"]["shared_counts"] == maps[node_a]["mapId"]
    assert entries[node_b]["maps"]["shared_counts"] == maps[node_b]["mapId"]
    listed = cluster.kubectl("get", "bpfprogramstates", "-l", "bpfshare.io/program=count-cgroup", "-o", "json")
    assert sorted(s["spec"]["node"] for s in json.loads(listed.stdout)["items"]) == sorted([node_a, node_b])
    assert not (cluster.get(PROGS, "count-cgroup") or {})["metadata"].get("finalizers")
    # nodeSelector: only the edge node runs edge-only; the other has no state of it.
    time.sleep(1)
    assert cluster.entry(PROGS, "edge-only", node_b) is None
    assert not (agent_b.pin_root / "programs" / "edge-only").exists()

    # Relabel node b as edge: its agent picks edge-only up (it watches its own Node).
    cluster.kubectl("label", "node", node_b, "role=edge", "--overwrite")
    cluster.wait_phase(PROGS, "edge-only", node_b)
    # ...and back: it lets go, and its state goes.
    cluster.kubectl("label", "node", node_b, "role=core", "--overwrite")
    cluster.wait(lambda: cluster.state(PROGS, "edge-only", node_b) is None, "node b's state of edge-only deleted")
    assert not (agent_b.pin_root / "programs" / "edge-only").exists()
    assert cluster.state(PROGS, "edge-only", node_a) is not None

    # Deletion: no controller, no finalizer: the objects go at once, and both agents still clean up
    # their nodes and delete their states.
    cluster.kubectl("delete", PROGS, "count-cgroup", "edge-only", "--wait=true", "--timeout=30s")
    cluster.kubectl("delete", MAPS, "flow-counts", "--wait=true", "--timeout=30s")

    def released() -> bool:
        return all(
            not (agent.pin_root / "programs" / "count-cgroup").exists()
            and not (agent.pin_root / "maps" / "flow-counts").exists()
            and not cluster.states_of(agent.node)
            for agent in (agent_a, agent_b)
        )

    cluster.wait(released, "both nodes released everything and deleted their states")
    assert bpftool("cgroup", "show", str(cgroup_dir)) == []


def test_sigkill_and_restart_keeps_ids_and_attachments(
    cluster: Cluster, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    node = cluster.add_node()
    agent = cluster.start_agent(node)
    m, tc, cg = cluster.apply_sharing(node, bpf_objects, netns_pair, cgroup_dir)
    before, map_id = {"count-ingress": tc, "count-cgroup": cg}, m["mapId"]
    agent.kill()
    netns_pair.send_udp(3)  # the datapath runs on without the agent
    assert counters(agent.pin_root / "maps" / "flow-counts")[TC_INGRESS] >= 3
    states = {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in cluster.states_of(node)}
    agent.start()
    time.sleep(4)  # the restarted agent's first pass and a resync
    assert agent.alive(), agent.log_tail()
    # It listed its states and found them right: nothing written again.
    assert {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in cluster.states_of(node)} == states
    for name, entry in before.items():
        now = cluster.wait_phase(PROGS, name, node)
        assert now["programId"] == entry["programId"]
        assert now["attachments"] == entry["attachments"]
    assert cluster.wait_phase(MAPS, "flow-counts", node)["mapId"] == map_id
    assert filters_on(netns_pair) == [before["count-ingress"]["programId"]]
    assert [p["id"] for p in bpftool("cgroup", "show", str(cgroup_dir))] == [before["count-cgroup"]["programId"]]  # type: ignore[union-attr,index]


def test_a_resource_deleted_while_its_agent_was_away_is_released_at_its_start(
    cluster: Cluster, bpf_objects, cgroup_dir: Path
) -> None:
    """No finalizer held it, so the agent never saw it deleting: absent from its first complete view,
    the program is removed from the node and its state deleted."""
    node = cluster.add_node()
    agent = cluster.start_agent(node)
    cluster.apply(bpfmap(), cgroup_program(bpf_objects["cgroup_counter_mapdef"], cgroup_dir))
    cluster.wait_phase(PROGS, "count-cgroup", node)
    agent.kill()
    cluster.kubectl("delete", PROGS, "count-cgroup", "--wait=true", "--timeout=30s")
    assert cluster.state(PROGS, "count-cgroup", node) is not None  # nobody else deletes it
    agent.start()
    cluster.wait(lambda: cluster.state(PROGS, "count-cgroup", node) is None, "the state of count-cgroup deleted")
    cluster.wait(lambda: bpftool("cgroup", "show", str(cgroup_dir)) == [], "the cgroup program detached")
    assert not (agent.pin_root / "programs" / "count-cgroup").exists()
    assert cluster.wait_phase(MAPS, "flow-counts", node)["usedBy"] == []  # used by none


def test_bad_resources_are_errors_in_status_and_disturb_nothing(
    cluster: Cluster, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    node = cluster.add_node()
    cluster.start_agent(node)
    cluster.apply(bpfmap(), tc_program(bpf_objects["flow_counter"], netns_pair))
    good = cluster.wait_phase(PROGS, "count-ingress", node)
    cluster.apply(
        bpfmap("flow-counts-2", type="Hash", keySize=8, maxEntries=16, pinName="flow-counts"),
        cgroup_program(
            bpf_objects["cgroup_counter_mapdef"], cgroup_dir, name="no-map", maps={"shared_counts": "does-not-exist"}
        ),
        tc_program(
            bpf_objects["flow_counter"],
            netns_pair,
            name="no-iface",
            attach={"tc": {"interfaces": ["nosuchif0"], "direction": "ingress", "networkNamespace": netns_pair.ns_b}},
        ),
        cgroup_program(
            bpf_objects["cgroup_counter_mapdef"],
            cgroup_dir,
            name="bad-digest",
            bytecode={"path": str(bpf_objects["cgroup_counter_mapdef"]), "sha256": "0" * 64},
        ),
    )
    m2 = cluster.wait_phase(MAPS, "flow-counts-2", node, "Error")
    assert "is held by BpfMap flow-counts: two BpfMaps may not share a pin" in m2["message"]
    assert "does-not-exist" in cluster.wait_phase(PROGS, "no-map", node, "Pending")["message"]
    assert "nosuchif0" in cluster.wait_phase(PROGS, "no-iface", node, "Error")["message"]
    assert "sha256" in cluster.wait_phase(PROGS, "bad-digest", node, "Error")["message"]
    assert cluster.wait_phase(PROGS, "count-ingress", node)["programId"] == good["programId"]
    assert filters_on(netns_pair) == [good["programId"]]

    # A missing map that appears later unblocks the waiting program: no restart needed.
    cluster.apply(bpfmap("does-not-exist"))
    cluster.wait_phase(PROGS, "no-map", node)


def test_a_lasting_failure_is_one_warning_not_one_per_resync(
    cluster: Cluster, bpf_objects, netns_pair: NetnsPair
) -> None:
    node = cluster.add_node()
    cluster.start_agent(node)  # resync every 2 s
    cluster.apply(
        bpfmap(),
        tc_program(
            bpf_objects["flow_counter"],
            netns_pair,
            name="lasting-failure",
            attach={"tc": {"interfaces": ["nosuchif0"], "direction": "ingress", "networkNamespace": netns_pair.ns_b}},
        ),
    )
    cluster.wait_phase(PROGS, "lasting-failure", node, "Error")
    time.sleep(7)  # three resyncs or more, each failing the same way

    def warnings() -> list[str]:
        out = cluster.kubectl(
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "involvedObject.name=lasting-failure,type=Warning",
            "-o",
            "name",
        ).stdout
        return out.split()

    assert len(warnings()) == 1


def test_with_the_controller_ready_means_every_node_and_deletion_waits_for_each(
    cluster: Cluster, bpf_objects, cgroup_dir: Path
) -> None:
    """The controller counts the nodes' states into the Ready condition and holds a deleted resource by
    its finalizer until every selected node's agent released it (and deleted its state)."""
    test = f"t{uuid.uuid4().hex[:8]}"  # only this test's Nodes are selected
    selector = {"nodeSelector": {"matchLabels": {"bpfshare-test": test}}}
    node_a, node_b = cluster.add_node({"bpfshare-test": test}), cluster.add_node({"bpfshare-test": test})
    agent_a, agent_b = cluster.start_agent(node_a), cluster.start_agent(node_b)
    cluster.start_controller()
    program = cgroup_program(bpf_objects["cgroup_counter_mapdef"], cgroup_dir, **selector)
    cluster.apply(bpfmap(**selector), program)
    keys = ((MAPS, "flow-counts"), (PROGS, "count-cgroup"))
    ready = cluster.wait_cluster_ready(*keys)
    assert {c["reason"] for c in ready.values()} == {"AllNodesReady"}
    for plural, name in keys:
        obj = cluster.get(plural, name) or {}
        assert obj["status"]["ready"] == "2/2" and obj["status"]["nodes"]["selected"] == 2
        assert obj["metadata"]["finalizers"] == [CONTROLLER_FINALIZER]
    waited = cluster.kubectl("wait", "--for=condition=Ready", f"{PROGS}/count-cgroup", "--timeout=10s")
    assert "condition met" in waited.stdout

    agent_b.kill()
    cluster.kubectl("delete", PROGS, "count-cgroup", "--wait=false")
    cluster.wait(lambda: cluster.state(PROGS, "count-cgroup", node_a) is None, "node a released count-cgroup")
    assert not (agent_a.pin_root / "programs" / "count-cgroup").exists()
    time.sleep(2)
    held = cluster.get(PROGS, "count-cgroup") or {}
    assert held["metadata"].get("deletionTimestamp"), "deleted while node b still holds it"
    assert cluster.state(PROGS, "count-cgroup", node_b) is not None
    agent_b.start()  # back: it sees the deletion, releases, deletes its state; the controller lets go
    cluster.wait(lambda: cluster.get(PROGS, "count-cgroup") is None, "count-cgroup gone once both nodes released it")
    assert not (agent_b.pin_root / "programs" / "count-cgroup").exists()
    assert cluster.state(PROGS, "count-cgroup", node_b) is None
