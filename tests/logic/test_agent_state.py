"""Which watch events make the agent work, and what a snapshot hands to the engine."""

from __future__ import annotations

import copy
from typing import Any

from bpfshare.agent.state import ClusterState
from tests.logic.test_resources import MAP, PROG


def body(base: dict[str, Any], **meta: Any) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    obj["metadata"].update(meta)
    return obj


def test_first_snapshot_is_complete_and_clears_dirt() -> None:
    state = ClusterState()
    state.on_map(None, body(MAP))
    state.on_program(None, body(PROG))
    snap = state.take()
    assert [m.name for m in snap.maps] == ["flow-counts"]
    assert [p.name for p in snap.programs] == ["count-ingress"]
    assert snap.only_programs is None  # everything
    assert not state.dirty


def test_status_only_changes_make_no_work() -> None:
    state = ClusterState()
    state.on_program(None, body(PROG, generation=1))
    state.take()
    written = body(PROG, generation=1)
    written["status"] = {"nodes": [{"node": "n1", "phase": "Ready"}]}
    assert state.on_program("MODIFIED", written) is False
    assert not state.dirty


def test_finalizers_added_or_removed_make_no_work() -> None:
    """The agent puts no finalizer on resources: the controller's, added or removed, is none of its business."""
    state = ClusterState()
    state.on_map(None, body(MAP, generation=1))
    state.on_program(None, body(PROG, generation=1))
    state.take()
    ours = ["bpfshare.io/controller"]
    assert state.on_program("MODIFIED", body(PROG, generation=1, finalizers=ours)) is False
    assert state.on_map("MODIFIED", body(MAP, generation=1, finalizers=ours)) is False
    assert state.on_program("MODIFIED", body(PROG, generation=1, finalizers=[])) is False
    assert not state.dirty


def test_a_new_uid_is_new_work() -> None:
    state = ClusterState()
    state.on_program(None, body(PROG, generation=1, uid="a"))
    state.take()
    assert state.on_program("MODIFIED", body(PROG, generation=1, uid="b")) is True


def test_spec_change_marks_only_that_program() -> None:
    state = ClusterState()
    state.on_program(None, body(PROG, generation=1))
    other = body(PROG, name="other", generation=1)
    state.on_program(None, other)
    state.take()
    assert state.on_program("MODIFIED", body(PROG, generation=2)) is True
    assert state.take().only_programs == {"count-ingress"}


def test_deletion_timestamp_and_map_changes_trigger() -> None:
    state = ClusterState()
    state.on_map(None, body(MAP, generation=1))
    state.on_program(None, body(PROG, generation=1))
    state.take()
    assert state.on_program("MODIFIED", body(PROG, generation=1, deletionTimestamp="2026-01-01T00:00:00Z"))
    state.take()
    assert state.on_map("MODIFIED", body(MAP, generation=2))
    assert state.take().only_programs is None  # a map change may affect any program


def test_node_labels() -> None:
    state = ClusterState()
    state.on_program(None, copy.deepcopy(PROG))
    state.take()
    node = {"metadata": {"name": "n1", "labels": {"role": "edge"}}}
    assert state.on_node(None, node) is True
    assert state.on_node("MODIFIED", node) is False  # same labels
    assert state.take().only_programs is None
    assert state.on_node("DELETED", node) is True  # no Node: no labels
    assert state.take().labels == {}


def test_config_maps_are_not_watched() -> None:
    """A changed ConfigMap is read again at the next resync (test_agent_publish.py): no event for it."""
    assert not hasattr(ClusterState(), "on_config_map")


def test_invalid_resources_are_reported_not_dropped() -> None:
    state = ClusterState()
    bad = copy.deepcopy(PROG)
    bad["spec"]["attach"] = {}
    state.on_program(None, bad)
    snap = state.take()
    assert snap.programs == []
    assert "spec.attach" in snap.invalid[("BpfProgram", "count-ingress")]


def test_a_body_is_parsed_once_and_again_only_when_a_new_one_arrives() -> None:
    import copy

    from bpfshare.agent.state import ClusterState

    body = {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfMap",
        "metadata": {"name": "m", "generation": 1},
        "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4},
    }
    state = ClusterState()
    state.on_map(None, body)
    first = state.take().maps[0]
    state.mark_all()
    assert state.take().maps[0] is first, "an idle resync parses (and validates) nothing again"
    changed = copy.deepcopy(body)
    changed["metadata"]["generation"] = 2
    changed["spec"]["maxEntries"] = 8
    state.on_map("MODIFIED", changed)
    again = state.take().maps[0]
    assert (again.max_entries, again.meta.generation) == (8, 2)
    broken = copy.deepcopy(changed)
    broken["metadata"]["generation"] = 3
    broken["spec"]["keySize"] = "four"
    state.on_map("MODIFIED", broken)
    snapshot = state.take()
    assert snapshot.maps == [] and "spec.keySize" in snapshot.invalid[("BpfMap", "m")]


def test_status_writes_do_not_make_a_resource_parsed_again() -> None:
    import copy

    from bpfshare.agent.state import ClusterState

    body = {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfMap",
        "metadata": {"name": "m", "generation": 4, "uid": "u-1", "resourceVersion": "10"},
        "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4},
    }
    state = ClusterState()
    state.on_map(None, body)
    first = state.take().maps[0]
    written = copy.deepcopy(body)  # the watch event of this agent's own status write
    written["metadata"]["resourceVersion"] = "11"
    written["status"] = {"nodes": [{"node": "n1", "phase": "Ready"}]}
    state.on_map("MODIFIED", written)
    state.mark_all()
    assert state.take().maps[0] is first
    deleting = copy.deepcopy(written)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    state.on_map("MODIFIED", deleting)
    assert state.take().maps[0].meta.deleting


def test_objects_stored_before_the_upgrade_parse_whatever_their_old_status() -> None:
    """A BpfMap written by the previous model's agents carries status.nodes[] and the per-node summary
    maps, unknown to the current schema: the agent reads the spec, never the status, so it is no Error."""
    state = ClusterState()
    old = body(MAP, uid="u1", generation=2, finalizers=["bpfshare.io/node-n1"])
    old["status"] = {
        "nodes": [{"node": "n1", "phase": "Ready", "mapId": 7, "observedGeneration": 2}],
        "mapIds": {"n1": 7},
        "phases": {"n1": "Ready"},
    }
    state.on_map(None, old)
    snap = state.take()
    assert snap.invalid == {}
    assert [m.name for m in snap.maps] == ["flow-counts"]
