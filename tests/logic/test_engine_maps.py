"""Engine decisions about BpfMaps, on the memory kernel: create, check, adopt, re-pin, re-create, release."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bpfshare.api.status import Phase
from bpfshare.engine.plan import AdoptMap, CreateMap, RepinMap, RetainMap, UnpinMap
from bpfshare.errors import KernelError
from bpfshare.spec import MapSpec
from bpfshare.types import MapType

from .enginekit import PIN_ROOT, Node, bpfmap, bpfprog, changes, deleting, ready, reasons

PIN = PIN_ROOT / "maps" / "flow-counts"
KEY = bytes(4)


def test_a_new_map_is_planned_then_created_and_pinned() -> None:
    node = Node()
    plan = node.plan([bpfmap()], [])
    assert isinstance(plan.maps[0].action, CreateMap)
    assert node.kernel.calls == [], "planning changed the node"
    assert changes(plan) == [f"BpfMap flow-counts: create map (Array, key 4, value 8, max entries 4) pinned at {PIN}"]
    report = node.engine.apply(plan)
    entry = ready(report.maps["flow-counts"])
    assert entry.map_id == node.kernel.map_at(PIN).id
    assert entry.pin_path == str(PIN)
    assert reasons(report) == [("flow-counts", "Created")]


def test_a_second_pass_changes_nothing() -> None:
    node = Node()
    first = node.run([bpfmap()], [])
    plan = node.plan([bpfmap()], [])
    assert not plan.changes_node()
    assert plan.maps[0].action is None
    second = node.engine.apply(plan)
    assert second.events == []
    assert second.maps["flow-counts"].map_id == first.maps["flow-counts"].map_id


def test_a_pinned_map_that_differs_is_an_error_naming_every_field_and_is_left_alone() -> None:
    node = Node()
    created = node.run([bpfmap()], [])
    node.kernel.update(PIN, KEY, b"12345678")
    report = node.run([bpfmap(keySize=4, valueSize=16, maxEntries=8, generation=2)], [])
    entry = report.maps["flow-counts"]
    assert entry.phase is Phase.Error
    assert "ValueSize: 8 changed to 16" in entry.message
    assert "MaxEntries: 4 changed to 8" in entry.message
    assert node.kernel.map_at(PIN).id == created.maps["flow-counts"].map_id
    assert node.kernel.lookup(PIN, KEY) == b"12345678"
    assert ("flow-counts", "Failed") in reasons(report)


def test_a_removed_pin_of_a_map_still_in_use_is_pinned_again_from_its_id_with_its_contents() -> None:
    node = Node()
    first = node.run([bpfmap()], [bpfprog()])
    map_id = first.maps["flow-counts"].map_id
    node.kernel.update(PIN, KEY, b"\x07" * 8)
    node.kernel.unpin(PIN)  # by hand: the tc program still holds the map
    plan = node.plan([bpfmap()], [bpfprog()])
    assert plan.maps[0].action == RepinMap(map_id or 0, PIN)
    assert [p.load for p in plan.programs] == [None], "the program keeps its map: no reload"
    report = node.engine.apply(plan)
    assert ready(report.maps["flow-counts"]).map_id == map_id
    assert node.kernel.lookup(PIN, KEY) == b"\x07" * 8
    assert ("flow-counts", "Repinned") in reasons(report)


def test_after_an_agent_restart_the_map_id_comes_from_the_program_records() -> None:
    node = Node()
    first = node.run([bpfmap()], [bpfprog()])
    node.kernel.unpin(PIN)
    node.restart_agent()  # no memory of map IDs, no status given
    plan = node.plan([bpfmap()], [bpfprog()])
    assert plan.maps[0].action == RepinMap(first.maps["flow-counts"].map_id or 0, PIN)


def test_a_map_that_is_gone_is_recreated_and_status_says_its_contents_were_lost() -> None:
    node = Node()
    first = node.run([bpfmap()], [])
    old = first.maps["flow-counts"].map_id
    node.kernel.reboot()
    node.restart_agent()
    plan = node.plan([bpfmap()], [], map_ids={"flow-counts": old or 0})
    assert plan.maps[0].action == CreateMap(plan.maps[0].spec, PIN, lost_id=old)
    report = node.engine.apply(plan)
    entry = ready(report.maps["flow-counts"])
    assert entry.map_id != old
    assert f"map {old} was gone" in entry.message and "contents lost" in entry.message
    assert [e.type for e in report.events if e.reason == "Recreated"] == ["Warning"]


def test_a_reused_map_id_of_an_unrelated_map_is_not_pinned_as_ours() -> None:
    node = Node()
    node.run([bpfmap("other", pinName="other")], [])
    other_id = node.kernel.map_at(PIN_ROOT / "maps" / "other").id
    plan = node.plan([bpfmap()], [], map_ids={"flow-counts": other_id})
    assert isinstance(plan.maps[0].action, CreateMap)
    assert plan.maps[0].action.lost_id == other_id


def test_adopt_waits_for_its_source_then_pins_the_same_map_again() -> None:
    node = Node()
    source = Path("/sys/fs/bpf/tc/globals/shared_counts")
    res = bpfmap(adopt=str(source))
    plan = node.plan([res], [])
    assert plan.maps[0].outcome is not None and plan.maps[0].outcome.phase is Phase.Pending
    assert f"waiting for {source}" in plan.maps[0].outcome.message
    node.kernel.get_or_create_map(MapSpec("shared_counts", MapType.Array, 4, 8, 4), source, "iproute2's map")
    plan = node.plan([res], [])
    assert isinstance(plan.maps[0].action, AdoptMap)
    report = node.engine.apply(plan)
    entry = ready(report.maps["flow-counts"])
    assert entry.map_id == node.kernel.map_at(source).id
    assert entry.map is not None and entry.map.adopted_from == str(source)
    assert node.kernel.exists(source), "the adopted pin is never removed"
    assert reasons(report) == [("flow-counts", "Adopted")]


def test_adopting_an_incompatible_map_names_the_fields_and_pins_nothing() -> None:
    node = Node()
    foreign = Path("/sys/fs/bpf/tc/globals/other")
    node.kernel.get_or_create_map(MapSpec("other", MapType.Hash, 4, 8, 64), foreign, "another tool's map")
    report = node.run([bpfmap(adopt=str(foreign))], [])
    entry = report.maps["flow-counts"]
    assert entry.phase is Phase.Error
    assert "Type: Hash changed to Array" in entry.message and "MaxEntries: 64 changed to 4" in entry.message
    assert not node.kernel.exists(PIN)


def test_adopting_a_path_outside_bpffs_is_an_error() -> None:
    # The CRD refuses it (spec.adopt is under /sys/fs/bpf): the engine's own check, for what passes
    # the schema but is no bpffs on this node (apply -f with --pin-root on another bpffs mount).
    report = Node().run([replace(bpfmap(), adopt="/tmp/not-bpffs")], [])
    assert report.maps["flow-counts"].phase is Phase.Error
    assert "not inside bpffs" in report.maps["flow-counts"].message


def test_a_pin_holding_a_program_is_an_error_for_that_map_only() -> None:
    node = Node()
    node.run([bpfmap()], [bpfprog()])
    node.kernel.pin_program(
        node.kernel.open_program(PIN_ROOT / "programs" / "count-ingress" / "program"), PIN_ROOT / "maps" / "squatted"
    )
    report = node.run([bpfmap(), bpfmap("squatted")], [bpfprog()])
    assert "holds a bpf-prog" in report.maps["squatted"].message
    ready(report.maps["flow-counts"])
    ready(report.programs["count-ingress"])


def test_a_kernel_failure_on_one_map_leaves_the_others_converging() -> None:
    node = Node()
    node.kernel.fail("get_or_create_map", KernelError("creating map: ENOMEM", 12))
    report = node.run([bpfmap("a", pinName="a"), bpfmap("b", pinName="b")], [])
    phases = {name: e.phase for name, e in report.maps.items()}
    assert phases == {"a": Phase.Error, "b": Phase.Ready}
    assert "ENOMEM" in report.maps["a"].message
    assert ready(node.run([bpfmap("a", pinName="a"), bpfmap("b", pinName="b")], []).maps["a"])


def test_deleting_a_map_with_reclaim_delete_unpins_it_and_releases_it() -> None:
    node = Node()
    node.run([bpfmap()], [])
    plan = node.plan([deleting(bpfmap())], [])
    assert plan.releases[0].action == UnpinMap(PIN)
    report = node.engine.apply(plan)
    assert not node.kernel.exists(PIN)
    assert node.kernel.live_maps() == [], "nothing holds the map any more: it is freed"
    assert ("BpfMap", "flow-counts") in report.released
    assert reasons(report) == [("flow-counts", "Deleted")]


def test_deleting_a_map_with_reclaim_retain_keeps_pin_and_contents() -> None:
    node = Node()
    node.run([bpfmap(reclaimPolicy="Retain")], [])
    node.kernel.update(PIN, KEY, b"\x01" * 8)
    plan = node.plan([deleting(bpfmap(reclaimPolicy="Retain"))], [])
    assert plan.releases[0].action == RetainMap(PIN)
    report = node.engine.apply(plan)
    assert node.kernel.lookup(PIN, KEY) == b"\x01" * 8
    assert ("BpfMap", "flow-counts") in report.released
    assert reasons(report) == [("flow-counts", "Retained")]


def test_deleting_a_map_in_use_waits_for_its_programs() -> None:
    node = Node()
    node.run([bpfmap()], [bpfprog()])
    report = node.run([deleting(bpfmap())], [bpfprog()])
    entry = report.maps["flow-counts"]
    assert entry.phase is Phase.Ready
    assert "deletion waits: still used by count-ingress" in entry.message
    assert ("BpfMap", "flow-counts") not in report.released
    assert node.kernel.exists(PIN)


def test_a_map_and_its_program_deleted_together_go_in_one_pass_program_first() -> None:
    node = Node()
    node.run([bpfmap()], [bpfprog()])
    report = node.run([deleting(bpfmap())], [deleting(bpfprog())])
    assert {("BpfMap", "flow-counts"), ("BpfProgram", "count-ingress")} <= report.released
    assert not node.kernel.exists(PIN)
    assert node.kernel.tc_filters() == {}
    assert [r for _, r in reasons(report)] == ["Detached", "Deleted"]


def test_a_map_no_longer_selecting_the_node_is_released_like_a_deleted_one() -> None:
    node = Node()
    selective = bpfmap(nodeSelector={"matchLabels": {"role": "edge"}})
    assert ready(node.engine.reconcile([selective], [], {"role": "edge"}).maps["flow-counts"])
    report = node.engine.reconcile([selective], [], {"role": "core"})
    assert ("BpfMap", "flow-counts") in report.released
    assert not node.kernel.exists(PIN)


def test_a_map_already_gone_from_the_node_is_released_without_action() -> None:
    node = Node()
    plan = node.plan([deleting(bpfmap())], [])
    assert plan.releases[0].action is None and plan.releases[0].users == ()
    assert ("BpfMap", "flow-counts") in node.engine.apply(plan).released


def test_used_by_names_the_programs_bound_to_the_map() -> None:
    node = Node()
    programs = [
        bpfprog(),
        bpfprog("count-egress", "count_egress", attach={"tc": {"interfaces": ["eth0"], "direction": "egress"}}),
    ]
    report = node.run([bpfmap()], programs)
    entry = ready(report.maps["flow-counts"])
    assert entry.map is not None and entry.map.used_by == ("count-egress", "count-ingress")
    assert entry.to_dict("node-1", 1)["usedBy"] == ["count-egress", "count-ingress"]
