"""The cluster view computed from a resource, the Nodes and the states (controller/aggregate.py), and
the finalizer decisions (controller/release.py): pure functions, no cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bpfshare.api.states import CONTROLLER_FINALIZER
from bpfshare.controller.aggregate import (
    MAX_CAUSE,
    MAX_MESSAGE,
    MAX_NAMED,
    cluster_status,
    merge_patch,
)
from bpfshare.controller.release import desired_finalizers, finalizer_patch, orphans, releasable

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def bpfmap(generation: int = 1, selector: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "Hash", "keySize": 4, "valueSize": 8, "maxEntries": 16}
    if selector is not None:
        spec["nodeSelector"] = selector
    return {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfMap",
        "metadata": {"name": "flow-counts", "generation": generation, **meta},
        "spec": spec,
    }


def state(phase: str = "Ready", generation: int = 1, message: str = "") -> dict[str, Any]:
    return {"phase": phase, "observedGeneration": generation, "message": message}


def nodes(*names: str, **labels: str) -> dict[str, dict[str, str]]:
    return {name: dict(labels) for name in names}


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_no_nodes_is_ready_with_no_nodes_selected() -> None:
    status = cluster_status(bpfmap(), {}, {}, T0)
    assert status["nodes"] == {"selected": 0, "ready": 0, "pending": 0, "error": 0}
    assert status["ready"] == "0/0"
    c = conditions(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "NoNodesSelected")
    assert (c["Reconciling"]["status"], c["Stalled"]["status"]) == ("False", "False")


def test_one_of_three_ready_names_the_pending_nodes_and_why() -> None:
    states = {"w1": state(), "w2": state(generation=1)}
    status = cluster_status(bpfmap(generation=2), nodes("w1", "w2", "w3"), states | {"w1": state(generation=2)}, T0)
    assert status["nodes"] == {"selected": 3, "ready": 1, "pending": 2, "error": 0}
    assert status["ready"] == "1/3"
    assert status["observedGeneration"] == 2
    c = conditions(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "NodesPending")
    assert (c["Reconciling"]["status"], c["Reconciling"]["reason"]) == ("True", "NodesPending")
    assert "w2: reports generation 1" in c["Reconciling"]["message"]
    assert "w3: no report" in c["Reconciling"]["message"]
    assert "1 of 3 nodes ready" in c["Ready"]["message"]
    assert all(cond["observedGeneration"] == 2 for cond in status["conditions"])


def test_all_ready() -> None:
    status = cluster_status(bpfmap(), nodes("a", "b"), {"a": state(), "b": state()}, T0)
    c = conditions(status)
    assert status["ready"] == "2/2"
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "AllNodesReady")
    assert (c["Reconciling"]["status"], c["Reconciling"]["reason"]) == ("False", "AllNodesReported")
    assert (c["Stalled"]["status"], c["Stalled"]["reason"]) == ("False", "NoErrors")


def test_an_error_wins_over_pending_and_names_node_and_cause() -> None:
    states = {"w1": state(), "w2": state("Error", message="map flow-counts: keySize 4 != 8")}
    status = cluster_status(bpfmap(), nodes("w1", "w2", "w3"), states, T0)
    c = conditions(status)
    assert status["nodes"] == {"selected": 3, "ready": 1, "pending": 1, "error": 1}
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "NodeErrors")
    assert (c["Stalled"]["status"], c["Stalled"]["reason"]) == ("True", "NodeErrors")
    assert c["Stalled"]["message"] == "1 of 3 nodes in Error: w2: map flow-counts: keySize 4 != 8"
    assert (c["Reconciling"]["status"], c["Reconciling"]["reason"]) == ("True", "NodesPending")


def test_an_error_on_an_older_generation_is_pending_not_stalled() -> None:
    status = cluster_status(bpfmap(generation=3), nodes("w1"), {"w1": state("Error", generation=2)}, T0)
    c = conditions(status)
    assert status["nodes"]["pending"] == 1 and status["nodes"]["error"] == 0
    assert c["Stalled"]["status"] == "False"
    assert "w1: reports generation 2" in c["Reconciling"]["message"]


def test_pending_phase_at_the_current_generation_says_its_message() -> None:
    status = cluster_status(bpfmap(), nodes("w1"), {"w1": state("Pending", message="waiting for map x")}, T0)
    assert "w1: Pending: waiting for map x" in conditions(status)["Reconciling"]["message"]


def test_node_selector_selects_by_labels_and_ignores_states_of_other_nodes() -> None:
    all_nodes = nodes("a1", "a2", role="a") | nodes("b1", role="b")
    states = {"a1": state(), "b1": state("Error", message="not selected")}
    status = cluster_status(bpfmap(selector={"matchLabels": {"role": "a"}}), all_nodes, states, T0)
    assert status["nodes"] == {"selected": 2, "ready": 1, "pending": 1, "error": 0}
    expressions = {"matchExpressions": [{"key": "role", "operator": "In", "values": ["b"]}]}
    status = cluster_status(bpfmap(selector=expressions), all_nodes, states, T0)
    assert status["nodes"] == {"selected": 1, "ready": 0, "pending": 0, "error": 1}


def test_a_node_that_is_gone_no_longer_counts() -> None:
    states = {"w1": state(), "gone": state("Error", message="x")}
    status = cluster_status(bpfmap(), nodes("w1"), states, T0)
    assert status["nodes"] == {"selected": 1, "ready": 1, "pending": 0, "error": 0}
    assert conditions(status)["Ready"]["status"] == "True"


def test_deleting_is_not_ready_and_reconciling_names_the_holders() -> None:
    body = bpfmap(deletionTimestamp="2026-01-01T00:00:00Z")
    status = cluster_status(body, nodes("w1", "w2"), {"w1": state(), "w2": state()}, T0)
    c = conditions(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "Deleting")
    assert (c["Reconciling"]["status"], c["Reconciling"]["reason"]) == ("True", "Releasing")
    assert c["Reconciling"]["message"] == "waiting for 2 nodes to release it: w1, w2"
    released = conditions(cluster_status(body, nodes("w1"), {}, T0))
    assert released["Reconciling"]["message"] == "no node holds it"


def test_messages_are_bounded_with_a_thousand_nodes() -> None:
    names = [f"worker-{i:04d}" for i in range(1000)]
    cause = "verifier: " + "x" * 5000
    states = {n: state("Error", message=cause) for n in names[:600]}
    status = cluster_status(bpfmap(), nodes(*names), states, T0)
    assert status["nodes"] == {"selected": 1000, "ready": 0, "pending": 400, "error": 600}
    for cond in status["conditions"]:
        assert len(cond["message"]) <= MAX_MESSAGE
    stalled = conditions(status)["Stalled"]["message"]
    assert stalled.startswith("600 of 1000 nodes in Error: worker-0000: verifier: ")
    assert stalled.endswith(f"and {600 - MAX_NAMED} more")
    assert stalled.count("worker-") == MAX_NAMED
    assert len(stalled) < MAX_NAMED * (MAX_CAUSE + 20) + 100
    assert conditions(status)["Reconciling"]["message"].endswith(f"and {400 - MAX_NAMED} more")
    assert len(str(status)) < 8 * 1024  # the object's size does not grow with the nodes


def test_causes_are_one_line_and_cut() -> None:
    status = cluster_status(bpfmap(), nodes("w1"), {"w1": state("Error", message="a\nb\n" + "y" * 1000)}, T0)
    message = conditions(status)["Stalled"]["message"]
    assert "\n" not in message and "a b y" in message and message.endswith("…")


def test_unchanged_inputs_give_identical_output_timestamps_included() -> None:
    body = bpfmap()
    first = cluster_status(body, nodes("w1"), {"w1": state("Pending")}, T0)
    body["status"] = first
    again = cluster_status(body, nodes("w1"), {"w1": state("Pending")}, T1)
    assert again == first


def test_last_transition_time_changes_only_when_the_status_flips() -> None:
    body = bpfmap()
    body["status"] = cluster_status(body, nodes("w1", "w2"), {}, T0)
    later = cluster_status(body, nodes("w1", "w2"), {"w1": state()}, T1)  # still pending: no flip
    assert all(c["lastTransitionTime"] == "2026-01-02T03:04:05Z" for c in later["conditions"])
    body["status"] = later
    ready = conditions(cluster_status(body, nodes("w1", "w2"), {"w1": state(), "w2": state()}, T1))
    assert ready["Ready"]["lastTransitionTime"] == ready["Reconciling"]["lastTransitionTime"] == "2026-01-02T03:09:05Z"
    assert ready["Stalled"]["lastTransitionTime"] == "2026-01-02T03:04:05Z"  # False before and after


def test_a_program_has_its_attach_summary() -> None:
    program = {
        "kind": "BpfProgram",
        "metadata": {"name": "p", "generation": 1},
        "spec": {"attach": {"tc": {"interfaces": ["eth0"], "direction": "ingress"}}},
    }
    assert cluster_status(program, {}, {}, T0)["attach"] == "tc/ingress eth0"
    assert "attach" not in cluster_status(bpfmap(), {}, {}, T0)


def test_merge_patch_sets_the_previous_models_keys_to_null() -> None:
    old = {"nodes": [{"node": "w1", "phase": "Ready"}], "phases": {"w1": "Ready"}, "mapIds": {"w1": 7}}
    new = cluster_status(bpfmap(), nodes("w1"), {"w1": state()}, T0)
    patch = merge_patch(old, new)
    assert patch["phases"] is None and patch["mapIds"] is None
    assert patch["nodes"] == new["nodes"]  # replaces the old list whole
    assert merge_patch(None, new) == new


# -- finalizers and release ---------------------------------------------------------------------


def is_node_of(*names: str):  # type: ignore[no-untyped-def]
    return lambda n: n in names


def test_a_live_resource_gets_the_controllers_finalizer_and_loses_legacy_ones_in_one_write() -> None:
    body = bpfmap(finalizers=["bpfshare.io/node-w1", "example.com/keep", "bpfshare.io/node-w2"])
    desired = desired_finalizers(body, is_node_of("w1", "w2"), lambda n: False, set())
    assert desired == ["example.com/keep", CONTROLLER_FINALIZER]
    assert desired_finalizers(bpfmap(finalizers=[CONTROLLER_FINALIZER]), is_node_of(), lambda n: False, set()) == [
        CONTROLLER_FINALIZER
    ]


def test_a_deleting_resource_keeps_a_legacy_finalizer_while_its_old_agent_may_hold_it() -> None:
    body = bpfmap(
        deletionTimestamp="2026-01-01T00:00:00Z",
        finalizers=[CONTROLLER_FINALIZER, "bpfshare.io/node-old", "bpfshare.io/node-new", "bpfshare.io/node-gone"],
    )
    has_agent = is_node_of("new", "holder")
    # old: still a Node, no new agent -> kept; new: new agent, no state for this -> dropped; gone -> dropped.
    # The controller's finalizer stays: "holder" still has a state of it.
    desired = desired_finalizers(body, is_node_of("old", "new", "holder"), has_agent, {"holder"})
    assert desired == [CONTROLLER_FINALIZER, "bpfshare.io/node-old"]
    # A new agent that still has a state of this resource keeps its legacy finalizer too.
    assert "bpfshare.io/node-new" in desired_finalizers(body, is_node_of("old", "new"), has_agent, {"new"})


def test_a_deleting_resource_is_released_when_only_states_of_vanished_nodes_remain() -> None:
    body = bpfmap(deletionTimestamp="2026-01-01T00:00:00Z", finalizers=[CONTROLLER_FINALIZER])
    assert desired_finalizers(body, is_node_of("w1"), lambda n: True, {"w1"}) == [CONTROLLER_FINALIZER]
    assert desired_finalizers(body, is_node_of("w1"), lambda n: True, {"gone"}) == []
    assert desired_finalizers(body, is_node_of("w1"), lambda n: True, set()) == []
    assert releasable({"gone"}, is_node_of("w1")) and not releasable({"w1"}, is_node_of("w1"))
    assert orphans({"w1": "m.w1", "gone": "m.gone"}, is_node_of("w1")) == ["m.gone"]


@pytest.mark.parametrize(
    ("current", "desired", "ops"),
    [
        (["a"], ["a"], None),
        ([], ["c"], ["test", "add"]),
        (["a", "c"], [], ["test", "remove"]),
        (["a"], ["a", "c"], ["test", "replace"]),
    ],
)
def test_finalizer_patches_test_what_they_change(current: list[str], desired: list[str], ops: list[str] | None) -> None:
    patch = finalizer_patch(current, desired, "42")
    assert (None if patch is None else [op["op"] for op in patch]) == ops
    if patch:
        assert patch[0]["value"] == (current or "42")
