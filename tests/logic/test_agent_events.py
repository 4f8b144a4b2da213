"""Which watch events make the agent work (agent/state.py), beyond test_agent_state.py: deletions,
metadata that is not the spec, ConfigMaps coming and going, what a pass after a pass sees, and that a
snapshot always reflects the latest body. An idle cluster must cost an idle agent nothing; a change
that matters must never be lost."""

from __future__ import annotations

import copy
from typing import Any

from bpfshare.agent.state import ClusterState
from tests.logic.test_resources import MAP, PROG


def body(base: dict[str, Any], **meta: Any) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    obj["metadata"].update(meta)
    return obj


def program(name: str, generation: int = 1, **spec: Any) -> dict[str, Any]:
    obj = body(PROG, name=name, generation=generation)
    obj["spec"].update(spec)
    return obj


def config_map_program(name: str, cm: str, generation: int = 1) -> dict[str, Any]:
    return program(name, generation, bytecode={"configMap": {"namespace": "ns", "name": cm, "key": "o"}})


def settled(*programs: dict[str, Any], maps: tuple[dict[str, Any], ...] = ()) -> ClusterState:
    """A state that has seen ``programs`` and ``maps`` and has had its first pass."""
    state = ClusterState()
    for m in maps:
        state.on_map(None, m)
    for p in programs:
        state.on_program(None, p)
    state.take()
    assert not state.dirty
    return state


def test_a_new_state_is_dirty_even_before_any_event() -> None:
    """The first pass runs on an empty cluster too: it removes what a previous agent left behind."""
    state = ClusterState()
    assert state.dirty
    snap = state.take()
    assert (snap.maps, snap.programs, snap.only_programs) == ([], [], None)
    assert not state.dirty


def test_a_pass_with_nothing_new_checks_no_program() -> None:
    state = settled(program("a"))
    snap = state.take()
    assert snap.only_programs == set()  # not None: None would mean "every program"
    assert [p.name for p in snap.programs] == ["a"]  # still known, for the engine's view of the node


def test_label_annotation_and_resource_version_changes_make_no_work() -> None:
    state = settled(program("a"), maps=(body(MAP, generation=1),))
    relabelled = program("a")
    relabelled["metadata"].update(labels={"team": "net"}, annotations={"note": "x"}, resourceVersion="99")
    assert state.on_program("MODIFIED", relabelled) is False
    assert state.on_map("MODIFIED", body(MAP, generation=1, labels={"a": "b"})) is False
    assert not state.dirty
    # ...but the snapshot has the newest body (its annotations, for example, reach the status writer).
    assert state.take().bodies[("BpfProgram", "a")]["metadata"]["labels"] == {"team": "net"}


def test_deleted_objects_leave_the_snapshot_without_a_pass_of_their_own() -> None:
    """DELETED comes after every finalizer is gone, so this node already released the object."""
    state = settled(program("a"), program("b"), maps=(body(MAP, generation=1),))
    assert state.on_program("DELETED", program("a")) is False
    assert state.on_map("DELETED", body(MAP, generation=1)) is False
    assert not state.dirty
    state.mark_all()
    snap = state.take()
    assert [p.name for p in snap.programs] == ["b"] and snap.maps == []
    assert ("BpfProgram", "a") not in snap.bodies and ("BpfMap", "flow-counts") not in snap.bodies


def test_deleting_an_unknown_object_is_harmless() -> None:
    state = settled()
    assert state.on_program("DELETED", program("never-seen")) is False
    assert state.on_map("DELETED", body(MAP, name="never-seen")) is False
    assert not state.dirty


def test_an_object_deleted_and_created_again_is_new_work() -> None:
    state = settled(program("a", generation=3))
    state.on_program("DELETED", program("a", generation=3))
    assert state.on_program("ADDED", program("a", generation=1)) is True
    assert state.take().only_programs == {"a"}


def test_changes_between_passes_accumulate_and_are_taken_once() -> None:
    state = settled(program("a"), program("b"), program("c"))
    state.on_program("MODIFIED", program("a", generation=2))
    state.on_program("MODIFIED", program("c", generation=2))
    state.on_program("MODIFIED", program("a", generation=3))
    snap = state.take()
    assert snap.only_programs == {"a", "c"}
    assert {p.name: p.meta.generation for p in snap.programs} == {"a": 3, "b": 1, "c": 2}
    assert state.take().only_programs == set()


def test_a_map_change_widens_the_pending_pass_to_every_program() -> None:
    state = settled(program("a"), program("b"), maps=(body(MAP, generation=1),))
    state.on_program("MODIFIED", program("a", generation=2))
    state.on_map("MODIFIED", body(MAP, generation=2))
    assert state.take().only_programs is None


def test_a_resync_checks_every_program() -> None:
    state = settled(program("a"))
    state.mark_all()
    assert state.dirty and state.take().only_programs is None


def test_a_program_fixed_after_being_invalid_is_parsed() -> None:
    broken = program("a", generation=1, attach={})
    state = settled(broken)
    fixed = program("a", generation=2)
    assert state.on_program("MODIFIED", fixed) is True
    snap = state.take()
    assert [p.name for p in snap.programs] == ["a"] and snap.invalid == {}


def test_an_invalid_map_is_reported_with_its_field() -> None:
    state = ClusterState()
    bad = body(MAP)
    bad["spec"]["keySize"] = "four"
    state.on_map(None, bad)
    snap = state.take()
    assert snap.maps == []
    assert snap.invalid == {
        ("BpfMap", "flow-counts"): "BpfMap flow-counts: spec.keySize: must be an integer, not 'four'"
    }
    assert snap.bodies[("BpfMap", "flow-counts")] is bad  # still known, so its status can say why


def test_config_map_updates_wake_only_their_users() -> None:
    state = settled(config_map_program("a", "objs"), config_map_program("b", "other"), program("c"))
    cm = {"metadata": {"namespace": "ns", "name": "objs", "resourceVersion": "1"}}
    assert state.on_config_map("ADDED", cm) is True
    assert state.take().only_programs == {"a"}
    assert state.on_config_map("MODIFIED", {**cm, "metadata": {**cm["metadata"], "resourceVersion": "2"}}) is True
    assert state.take().only_programs == {"a"}


def test_a_config_map_in_another_namespace_is_another_config_map() -> None:
    state = settled(config_map_program("a", "objs"))
    elsewhere = {"metadata": {"namespace": "kube-system", "name": "objs", "resourceVersion": "1"}}
    assert state.on_config_map("ADDED", elsewhere) is False
    assert not state.dirty


def test_a_deleted_config_map_wakes_its_users_once() -> None:
    """The program's bytecode is gone: its status must say so (and say so only once)."""
    state = settled(config_map_program("a", "objs"))
    cm = {"metadata": {"namespace": "ns", "name": "objs", "resourceVersion": "4"}}
    state.on_config_map("ADDED", cm)
    state.take()
    assert state.on_config_map("DELETED", cm) is True
    assert state.take().only_programs == {"a"}
    assert state.on_config_map("DELETED", cm) is False


def test_a_program_switching_to_a_config_map_is_woken_by_it() -> None:
    state = settled(program("a"))
    cm = {"metadata": {"namespace": "ns", "name": "objs", "resourceVersion": "1"}}
    assert state.on_config_map("ADDED", cm) is False  # nobody uses it yet
    state.on_program("MODIFIED", config_map_program("a", "objs", generation=2))
    state.take()
    assert state.on_config_map("MODIFIED", {"metadata": {**cm["metadata"], "resourceVersion": "2"}}) is True


def test_node_labels_set_removed_and_node_deleted() -> None:
    state = settled(program("a"))
    assert state.on_node("ADDED", {"metadata": {"name": "n1"}}) is False  # no labels, none known
    assert state.on_node("MODIFIED", {"metadata": {"name": "n1", "labels": {"zone": "a"}}}) is True
    snap = state.take()
    assert snap.labels == {"zone": "a"} and snap.only_programs is None
    assert state.on_node("MODIFIED", {"metadata": {"name": "n1", "labels": {}}}) is True
    assert state.take().labels == {}


def test_the_snapshot_labels_are_a_copy() -> None:
    state = settled()
    state.on_node("ADDED", {"metadata": {"labels": {"zone": "a"}}})
    snap = state.take()
    snap.labels["zone"] = "changed by the engine"
    assert state.take().labels == {"zone": "a"}
