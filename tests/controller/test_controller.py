"""``bpfshare controller`` against the real kube-apiserver, with state objects written as agents would."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bpfshare.api.resources import GROUP, MAP_PLURAL, PROGRAM_PLURAL, VERSION
from bpfshare.api.states import CONTROLLER_FINALIZER, MAP_STATE, PROGRAM_STATE, state_name
from tests.fixtures.controller import Ctl, measure

pytestmark = pytest.mark.cluster

MAPS, PROGS = MAP_PLURAL, PROGRAM_PLURAL
FAILOVER_LIMIT = 15.0  # seconds (issue 12)


def reasons(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def test_conditions_and_counts_follow_the_states(ctl: Ctl) -> None:
    w1, w2, w3 = ctl.add_node(), ctl.add_node(), ctl.add_node()
    name = ctl.add_map()
    ctl.start()
    status = ctl.wait_status(MAPS, name, lambda s: s.get("ready") == "0/3", "0/3 nodes ready")
    assert reasons(status)["Reconciling"] == ("True", "NodesPending")
    assert all(f"{n}: no report" in ctl.condition(MAPS, name, "Reconciling")["message"] for n in (w1, w2, w3))
    body = ctl.get(MAPS, name) or {}
    assert body["metadata"]["finalizers"] == [CONTROLLER_FINALIZER]
    assert not any(k.startswith("kopf") for k in body["metadata"].get("annotations") or {})

    ctl.write_state(MAP_STATE, name, w1)
    ctl.write_state(MAP_STATE, name, w2)
    ctl.write_state(MAP_STATE, name, w3, "Error", message="keySize 4 differs from the pinned map's 8")
    status = ctl.wait_status(MAPS, name, lambda s: s["nodes"]["error"] == 1, "one node in Error")
    assert status["nodes"] == {"selected": 3, "ready": 2, "pending": 0, "error": 1} and status["ready"] == "2/3"
    assert reasons(status)["Stalled"] == ("True", "NodeErrors")
    assert reasons(status)["Ready"] == ("False", "NodeErrors")
    stalled = ctl.condition(MAPS, name, "Stalled")["message"]
    assert stalled == f"1 of 3 nodes in Error: {w3}: keySize 4 differs from the pinned map's 8"

    ctl.write_state(MAP_STATE, name, w3)
    ctl.kubectl("wait", "--for=condition=Ready", f"bpfmap/{name}", "--timeout=20s")
    table = ctl.kubectl("get", "bpfmap", name).stdout
    assert "3/3" in table and "AllNodesReady" in table

    # A new generation that no node has reported on is Reconciling, naming what each node reports.
    ctl.kubectl("patch", "bpfmap", name, "--type=merge", "-p", '{"spec": {"maxEntries": 32}}')
    status = ctl.wait_status(MAPS, name, lambda s: s.get("observedGeneration") == 2, "generation 2")
    assert reasons(status)["Reconciling"] == ("True", "NodesPending") and status["ready"] == "0/3"
    assert f"{w1}: reports generation 1" in ctl.condition(MAPS, name, "Reconciling")["message"]
    ready = ctl.kubectl("wait", "--for=condition=Ready", f"bpfmap/{name}", "--timeout=1s", check=False)
    assert ready.returncode != 0


def test_a_program_shows_its_attach_kind_and_readiness(ctl: Ctl) -> None:
    node = ctl.add_node()
    name = ctl.add_program()
    ctl.start()
    ctl.write_state(PROGRAM_STATE, name, node)
    ctl.kubectl("wait", "--for=condition=Ready", f"bpfprogram/{name}", "--timeout=20s")
    status = ctl.status(PROGS, name)
    assert status["attach"] == "tc/ingress eth0" and status["ready"] == "1/1"
    row = ctl.kubectl("get", "bpfprogs", name, "--no-headers").stdout.split()
    assert row[1:3] == ["tc/ingress", "eth0"] and "1/1" in row and "AllNodesReady" in row


def test_deletion_waits_for_the_states_and_a_deleted_node_releases_it(ctl: Ctl) -> None:
    w1, w2 = ctl.add_node(), ctl.add_node()
    name = ctl.add_map()
    keep = ctl.add_map()
    ctl.start()
    for node in (w1, w2):
        ctl.write_state(MAP_STATE, name, node)
    ctl.write_state(MAP_STATE, keep, w1)
    ctl.kubectl("wait", "--for=condition=Ready", f"bpfmap/{name}", "--timeout=20s")

    ctl.kubectl("delete", "bpfmap", name, "--wait=false")
    status = ctl.wait_status(MAPS, name, lambda s: reasons(s).get("Ready") == ("False", "Deleting"), "Deleting")
    assert reasons(status)["Reconciling"] == ("True", "Releasing")
    first, second = sorted((w1, w2))  # the message names nodes in order
    assert (
        ctl.condition(MAPS, name, "Reconciling")["message"] == f"waiting for 2 nodes to release it: {first}, {second}"
    )
    ctl.release_state(MAP_STATE, name, w1)
    ctl.wait(lambda: w1 not in ctl.condition(MAPS, name, "Reconciling")["message"], "w1 released")
    time.sleep(1.0)
    assert ctl.get(MAPS, name) is not None  # w2 still holds it

    ctl.delete_node(w2)  # a vanished node: its state goes, and with it the last holder
    ctl.wait(lambda: ctl.get(MAPS, name) is None, "the map to be deleted")
    assert ctl.get(MAP_STATE.plural, state_name(name, w2)) is None
    assert ctl.get(MAP_STATE.plural, state_name(keep, w1)) is not None


def test_the_states_of_a_deleted_node_are_removed(ctl: Ctl) -> None:
    gone, stays = ctl.add_node(), ctl.add_node()
    m, p = ctl.add_map(), ctl.add_program()
    ctl.start()
    for node in (gone, stays):
        ctl.write_state(MAP_STATE, m, node)
        ctl.write_state(PROGRAM_STATE, p, node)
    ctl.wait_status(MAPS, m, lambda s: s.get("ready") == "2/2", "2/2")
    ctl.delete_node(gone)
    ctl.wait(
        lambda: (
            ctl.get(MAP_STATE.plural, state_name(m, gone)) is None
            and ctl.get(PROGRAM_STATE.plural, state_name(p, gone)) is None
        ),
        "the vanished node's states to be deleted",
    )
    assert ctl.get(MAP_STATE.plural, state_name(m, stays)) is not None
    ctl.wait_status(MAPS, m, lambda s: s.get("ready") == "1/1", "1/1 once the node is gone")
    ctl.wait_status(PROGS, p, lambda s: s.get("ready") == "1/1", "1/1 once the node is gone")


def test_a_deletion_is_held_across_a_controller_restart(ctl: Ctl) -> None:
    """The reason the finalizer is the controller's own and not kopf's: kopf releases an object being
    deleted at once when no daemon of it runs, as after a restart."""
    node = ctl.add_node()
    name = ctl.add_map()
    controller = ctl.start()
    ctl.write_state(MAP_STATE, name, node)
    ctl.kubectl("wait", "--for=condition=Ready", f"bpfmap/{name}", "--timeout=20s")
    controller.stop()
    ctl.kubectl("delete", "bpfmap", name, "--wait=false")
    ctl.start()
    ctl.wait_status(MAPS, name, lambda s: reasons(s).get("Ready") == ("False", "Deleting"), "Deleting")
    time.sleep(2.0)
    assert ctl.get(MAPS, name) is not None
    ctl.release_state(MAP_STATE, name, node)
    ctl.wait(lambda: ctl.get(MAPS, name) is None, "the map to be deleted")


def peers(ctl: Ctl) -> dict[str, Any]:
    body = ctl.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", ctl.peering)
    return dict(body.get("status") or {})


def writers(ctl: Ctl) -> list[str]:
    return [c.node for c in ctl.controllers if "active: writing status" in c.log.read_text(errors="replace")]


def test_one_replica_writes_and_another_takes_over_within_15_s_of_a_sigkill(ctl: Ctl) -> None:
    node = ctl.add_node()
    name = ctl.add_map()
    top = ctl.start(300, "top")
    ctl.wait_status(MAPS, name, lambda s: s.get("ready") == "0/1", "a first status")
    # Standbys start paused and stay so: the active replica's entry is in the peering object. (Replicas
    # started at the same instant can all be active for a moment, each writing the same status.)
    second, third = ctl.start(200, "second"), ctl.start(100, "third")
    ctl.wait(lambda: len(peers(ctl)) == 3, "the standbys' entries in the peering object")
    peering = ctl.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", ctl.peering)
    assert not peering["metadata"].get("finalizers")  # deleting it never waits for a controller
    time.sleep(1.0)
    assert writers(ctl) == ["top"]
    ctl.write_state(MAP_STATE, name, node, "Pending")
    ctl.wait(lambda: "Pending" in ctl.condition(MAPS, name, "Reconciling").get("message", ""), "Pending")
    assert writers(ctl) == ["top"]

    top.kill()
    killed = time.monotonic()
    ctl.write_state(MAP_STATE, name, node)  # a change after the kill
    took = measure(lambda: ctl.status(MAPS, name).get("ready") == "1/1", FAILOVER_LIMIT + 5)
    print(f"failover: the change made after SIGKILL was written {took} s later")
    assert took is not None and took < FAILOVER_LIMIT, (took, ctl.logs())
    assert writers(ctl) == ["top", "second"]
    assert time.monotonic() - killed < FAILOVER_LIMIT + 5
    assert second.alive() and third.alive()


def count_writes(ctl: Ctl, name: str, stop: threading.Event, seen: list[str]) -> None:
    """Record the resourceVersion of every change of the map (a watch, as a GitOps tool would see)."""
    from kubernetes import watch

    w = watch.Watch()
    for event in w.stream(
        ctl.custom.list_cluster_custom_object, GROUP, VERSION, MAPS,
        field_selector=f"metadata.name={name}", timeout_seconds=60,
    ):  # fmt: skip
        if event["type"] == "MODIFIED":
            seen.append(event["object"]["metadata"]["resourceVersion"])
        if stop.is_set():
            w.stop()


def test_a_burst_of_1000_state_writes_causes_few_status_writes(ctl: Ctl) -> None:
    nodes = [ctl.add_node() for _ in range(20)]
    name = ctl.add_map()
    ctl.start()
    ctl.wait_status(MAPS, name, lambda s: s.get("ready") == "0/20", "0/20")
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=count_writes, args=(ctl, name, stop, seen), daemon=True)
    watcher.start()
    time.sleep(0.5)
    started = time.monotonic()
    for i in range(50):  # 1000 state writes, each changing what the map's status says
        for node in nodes:
            ctl.write_state(MAP_STATE, name, node, "Pending", message=f"step {i}")
    burst = time.monotonic() - started
    for node in nodes:
        ctl.write_state(MAP_STATE, name, node)
    ctl.wait_status(MAPS, name, lambda s: s.get("ready") == "20/20", "20/20")
    total = time.monotonic() - started
    time.sleep(1.5)
    stop.set()
    ctl.kubectl("annotate", "bpfmap", name, "poke=1")  # ends the watch loop
    watcher.join(10)
    writes = len(seen) - 1  # the annotation
    print(f"coalescing: 1020 state writes in {burst:.1f} s, {writes} status writes in {total:.1f} s")
    # At most about one a second; the Pending reports change progress alone (written at most every
    # progress_interval, 10 s), and the last turns Ready True, which is written at once.
    assert 1 <= writes <= total * 1.5 + 3, (writes, total)
    assert writes <= total / 10 + 3, (writes, total)


PREVIOUS_CRD = Path(__file__).with_name("previous-bpfmap-crd.yaml")
CURRENT_CRD = Path(__file__).resolve().parents[2] / "crds" / "bpfmap.yaml"


def test_upgrade_replaces_the_old_status_and_the_per_node_finalizers(ctl: Ctl) -> None:
    old_agent, new_agent = ctl.add_node(), ctl.add_node()
    # Objects as the previous model left them: per-node status entries and finalizers.
    ctl.kubectl("apply", "-f", str(PREVIOUS_CRD))
    try:
        live = ctl.add_map(finalizers=[f"bpfshare.io/node-{old_agent}", f"bpfshare.io/node-{new_agent}"])
        held = ctl.add_map(
            finalizers=[f"bpfshare.io/node-{n}" for n in (old_agent, new_agent, "vanished-node")]
        )  # fmt: skip
        old_status = {
            "nodes": [{"node": old_agent, "phase": "Ready", "observedGeneration": 1, "mapId": 7}],
            "phases": {old_agent: "Ready"},
            "mapIds": {old_agent: 7},
        }
        for name in (live, held):
            ctl.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, MAPS, name, {"status": old_status}, _content_type="application/merge-patch+json"
            )
        assert ctl.status(MAPS, live)["phases"] == {old_agent: "Ready"}
    finally:
        ctl.kubectl("apply", "-f", str(CURRENT_CRD))
    ctl.kubectl("wait", "--for=condition=Established", "crd/bpfmaps.bpfshare.io", "--timeout=30s")
    ctl.kubectl("delete", "bpfmap", held, "--wait=false")
    other = ctl.add_map()
    ctl.write_state(MAP_STATE, other, new_agent)  # new_agent runs an agent of this model: it has a state

    ctl.start()
    status = ctl.wait_status(MAPS, live, lambda s: isinstance(s.get("nodes"), dict), "the new status")
    assert set(status) == {"observedGeneration", "nodes", "ready", "conditions"}
    assert status["ready"] == "0/2"
    assert (ctl.get(MAPS, live) or {})["metadata"]["finalizers"] == [CONTROLLER_FINALIZER]

    # The deleted one: the per-node finalizers of the vanished node and of the node whose new agent
    # holds no state of it go; the old agent's stays until that node is gone.
    ctl.wait(
        lambda: (ctl.get(MAPS, held) or {}).get("metadata", {}).get("finalizers") == [f"bpfshare.io/node-{old_agent}"],
        "only the old agent's finalizer left",
    )
    assert set(ctl.status(MAPS, held)) == {"observedGeneration", "nodes", "ready", "conditions"}
    ctl.delete_node(old_agent)
    ctl.wait(lambda: ctl.get(MAPS, held) is None, "the deleted map to go")
