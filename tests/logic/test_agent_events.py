"""Which watch events make the agent work (agent/state.py), beyond test_agent_state.py: deletions
(tombstones until released), metadata that is not the spec, what a pass after a pass sees, and that a
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


def test_deleted_objects_stay_as_tombstones_until_a_pass_released_them() -> None:
    """Without the controller's finalizer, DELETED may be the first this node hears of a deletion: the
    next pass sees the last body, deleting, so the engine releases it; then it goes."""
    state = settled(program("a"), program("b"), maps=(body(MAP, generation=1),))
    assert state.on_program("DELETED", program("a")) is True
    assert state.on_map("DELETED", body(MAP, generation=1)) is True
    assert state.on_program("DELETED", program("a")) is False  # once
    snap = state.take()
    assert snap.only_programs is None  # a map went
    deleting = {(p.name, p.meta.deleting) for p in snap.programs} | {(m.name, m.meta.deleting) for m in snap.maps}
    assert deleting == {("a", True), ("b", False), ("flow-counts", True)}
    assert state.tombstones == {("BpfProgram", "a"), ("BpfMap", "flow-counts")}
    state.released("BpfProgram", "a")
    state.released("BpfMap", "flow-counts")
    state.released("BpfProgram", "b")  # released but not deleted (no longer selecting): stays
    state.mark_all()
    snap = state.take()
    assert [p.name for p in snap.programs] == ["b"] and snap.maps == []
    assert ("BpfProgram", "a") not in snap.bodies and ("BpfMap", "flow-counts") not in snap.bodies
    assert state.tombstones == set()


def test_a_resource_created_again_replaces_its_tombstone() -> None:
    state = settled(program("a", generation=3))
    state.on_program("DELETED", program("a", generation=3))
    assert state.on_program("ADDED", body(program("a", generation=1), uid="new")) is True
    assert state.tombstones == set()
    state.released("BpfProgram", "a")  # a release of the old one, late: the new one stays
    assert not state.take().programs[0].meta.deleting


def test_deleting_an_unknown_object_is_harmless() -> None:
    state = settled()
    assert state.on_program("DELETED", program("never-seen")) is False
    assert state.on_map("DELETED", body(MAP, name="never-seen")) is False
    assert not state.dirty and state.tombstones == set()


def test_an_object_deleted_and_created_again_is_new_work() -> None:
    state = settled(program("a", generation=3))
    state.on_program("DELETED", program("a", generation=3))
    state.take()
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
