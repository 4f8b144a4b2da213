"""bpfshare owns exactly what it claims (issue 11): the ledger, conflicts named, map contents kept."""

from __future__ import annotations

from pathlib import Path

from bpfshare.api.status import Phase
from bpfshare.api.targets import TcTarget
from bpfshare.engine.plan import MoveMap, RepinMap
from bpfshare.spec import MapSpec
from bpfshare.types import MapType

from .enginekit import PIN_ROOT, Node, bpfmap, bpfprog, cgroup, deleting, obj, ready, reasons, tc

MAPS = PIN_ROOT / "maps"
KEY = bytes(4)
FOREIGN = Path("/sys/fs/bpf/tc/globals/shared_counts")


def foreign_map(node: Node, path: Path = FOREIGN, name: str = "shared_counts") -> int:
    info, _ = node.kernel.get_or_create_map(MapSpec(name, MapType.Array, 4, 8, 4), path, "another tool's map")
    return info.id


# -- maps ----------------------------------------------------------------------------------------


def test_two_bpfmaps_on_one_pin_the_second_is_refused_naming_the_first() -> None:
    node = Node()
    first, second = bpfmap("a", pinName="shared"), bpfmap("b", pinName="shared", reclaimPolicy="Retain")
    report = node.run([first, second], [])
    ready(report.maps["a"])
    assert report.maps["b"].phase is Phase.Error
    assert f"pin {MAPS / 'shared'} is held by BpfMap a" in report.maps["b"].message


def test_deleting_the_refused_twin_never_touches_the_holders_pin() -> None:
    node = Node()
    first, second = bpfmap("a", pinName="shared", reclaimPolicy="Retain"), bpfmap("b", pinName="shared")
    node.run([first, second], [])
    node.kernel.update(MAPS / "shared", KEY, b"keepme!!")
    report = node.run([first, deleting(second)], [])
    assert ("BpfMap", "b") in report.released
    assert node.kernel.lookup(MAPS / "shared", KEY) == b"keepme!!"
    assert not any(e.reason == "Recreated" for e in node.run([first], []).events)


def test_the_holder_stays_the_holder_across_passes_whatever_the_order() -> None:
    node = Node()
    node.run([bpfmap("z", pinName="shared")], [])
    report = node.run([bpfmap("a", pinName="shared"), bpfmap("z", pinName="shared")], [])
    ready(report.maps["z"])
    assert "held by BpfMap z" in report.maps["a"].message


def test_a_pin_name_change_moves_the_same_map_with_its_contents() -> None:
    node = Node()
    first = node.run([bpfmap()], [bpfprog()])
    map_id = first.maps["flow-counts"].map_id
    node.kernel.update(MAPS / "flow-counts", KEY, b"\x09" * 8)
    moved = bpfmap(pinName="renamed", generation=2)
    plan = node.plan([moved], [bpfprog()])
    assert plan.maps[0].action == MoveMap(MAPS / "flow-counts", MAPS / "renamed", map_id or 0)
    report = node.engine.apply(plan)
    assert ready(report.maps["flow-counts"]).map_id == map_id
    assert node.kernel.lookup(MAPS / "renamed", KEY) == b"\x09" * 8
    assert not node.kernel.exists(MAPS / "flow-counts"), "the old pin is not left behind"
    program = ready(report.programs["count-ingress"]).program
    assert program is not None and program.maps["shared_counts"] == map_id
    assert ("flow-counts", "Moved") in reasons(report)
    # ... and delete removes the new pin: the map goes.
    node.run([deleting(moved)], [deleting(bpfprog())])
    assert node.kernel.list_dir(MAPS) == [] and node.kernel.live_maps() == []


def test_a_pin_name_change_onto_an_existing_pin_is_refused_and_the_map_stays() -> None:
    node = Node()
    node.run([bpfmap(), bpfmap("other", pinName="taken")], [])
    report = node.run([bpfmap(pinName="taken", generation=2), bpfmap("other", pinName="taken")], [])
    assert report.maps["flow-counts"].phase is Phase.Error
    assert node.kernel.exists(MAPS / "flow-counts")


def test_an_adopted_map_is_pinned_again_from_its_recorded_id_whatever_its_kernel_name() -> None:
    node = Node()
    foreign_id = foreign_map(node, name="their_name")
    res = bpfmap(adopt=str(FOREIGN))
    node.run([res], [bpfprog()])
    node.kernel.update(MAPS / "flow-counts", KEY, b"\x05" * 8)
    node.kernel.unpin(MAPS / "flow-counts")
    node.restart_agent()
    plan = node.plan([res], [bpfprog()])
    assert plan.maps[0].action == RepinMap(foreign_id, MAPS / "flow-counts")
    report = node.engine.apply(plan)
    assert ready(report.maps["flow-counts"]).map_id == foreign_id
    assert node.kernel.lookup(MAPS / "flow-counts", KEY) == b"\x05" * 8
    assert [p for p in report.programs.values() if p.program and p.program.program_id] and not any(
        e.reason in ("Upgraded", "Loaded") for e in report.events
    ), "the program keeps running on its map: no reload"


def test_adopting_bpfshares_own_pin_is_refused() -> None:
    node = Node()
    node.run([bpfmap("a", pinName="a")], [])
    report = node.run([bpfmap("a", pinName="a"), bpfmap("b", pinName="b", adopt=str(MAPS / "a"))], [])
    assert "a pin bpfshare manages itself" in report.maps["b"].message
    assert not node.kernel.exists(MAPS / "b")


def test_adopting_a_directory_says_so() -> None:
    node = Node()
    foreign_map(node)
    report = node.run([bpfmap(adopt=str(FOREIGN.parent))], [])
    assert "is a directory, not a pinned map" in report.maps["flow-counts"].message


def test_a_changed_adopt_naming_another_map_is_reported_and_nothing_is_swapped() -> None:
    node = Node()
    first_id = foreign_map(node)
    node.run([bpfmap(adopt=str(FOREIGN))], [])
    other = Path("/sys/fs/bpf/tc/globals/other")
    foreign_map(node, other, "other")
    report = node.run([bpfmap(adopt=str(other), generation=2)], [])
    entry = report.maps["flow-counts"]
    assert entry.phase is Phase.Error
    assert (
        f"spec.adopt changed to {other}" in entry.message and f"map {first_id} adopted from {FOREIGN}" in entry.message
    )
    assert node.kernel.map_at(MAPS / "flow-counts").id == first_id


def test_a_changed_adopt_naming_the_same_map_is_accepted_and_status_tells_the_new_source() -> None:
    node = Node()
    map_id = foreign_map(node)
    node.run([bpfmap(adopt=str(FOREIGN))], [])
    alias = Path("/sys/fs/bpf/tc/globals/alias")
    node.kernel.pin_existing_map(FOREIGN, alias)
    entry = ready(node.run([bpfmap(adopt=str(alias), generation=2)], []).maps["flow-counts"])
    assert entry.map is not None and (entry.map.map_id, entry.map.adopted_from) == (map_id, str(alias))


def test_remembered_map_ids_of_deleted_bpfmaps_are_forgotten() -> None:
    node = Node()
    node.run([bpfmap()], [])
    node.run([deleting(bpfmap())], [])
    node.kernel.reboot()  # the old ID is free again; a new map could even get it
    report = node.run([bpfmap()], [])
    entry = ready(report.maps["flow-counts"])
    assert "contents lost" not in entry.message, "a new BpfMap is not a lost old one"
    assert reasons(report) == [("flow-counts", "Created")]


# -- programs ------------------------------------------------------------------------------------


def test_a_tc_slot_held_by_another_tool_is_refused_naming_the_filter_and_kept() -> None:
    node = Node()
    node.kernel.add_foreign_tc_filter(TcTarget("eth0", "ingress"), prog_id=4242, name="cilium-ingress")
    report = node.run([bpfmap()], [bpfprog()])
    entry = report.programs["count-ingress"]
    assert entry.phase is Phase.Error
    assert "tc slot eth0 ingress priority 1 handle 1 is held by another tool: filter cilium-ingress" in entry.message
    assert node.kernel.tc_filters()["eth0:ingress@None 1:1"].prog_id == 4242
    assert node.kernel.live_programs() == [], "nothing was loaded for a target it could not take"
    node.run([bpfmap()], [deleting(bpfprog())])
    assert node.kernel.tc_filters()["eth0:ingress@None 1:1"].prog_id == 4242, "delete never removes it"


def test_two_bpfprograms_on_one_tc_slot_the_second_is_refused_naming_the_first() -> None:
    node = Node()
    first, second = bpfprog("a"), bpfprog("b", "count_egress")
    report = node.run([bpfmap()], [first, second])
    ready(report.programs["a"])
    assert "is held by BpfProgram a" in report.programs["b"].message
    holder = report.programs["a"].program_id
    again = node.run([bpfmap()], [first, second])
    assert (
        again.programs["a"].program_id == holder and node.kernel.tc_filters()["eth0:ingress@None 1:1"].prog_id == holder
    )
    assert not any(e.reason in ("Loaded", "Upgraded", "Attached") for e in again.events), "no flapping"


def test_every_missing_interface_is_named_and_nothing_is_attached() -> None:
    node = Node()
    report = node.run([bpfmap()], [bpfprog(attach=tc("eth0", "eth8", "eth9"))])
    message = report.programs["count-ingress"].message
    assert "interface eth8 not found" in message and "interface eth9 not found" in message
    assert node.kernel.tc_filters() == {} and node.kernel.live_programs() == []


def test_a_too_long_interface_name_is_called_too_long() -> None:
    import pytest

    from bpfshare.api.resources import ResourceError

    with pytest.raises(ResourceError, match="too long: 16 characters, at most 15"):
        bpfprog(attach=tc("a" * 16))
    assert "longer than 15 characters" in (Node().kernel.missing_target(TcTarget("a" * 16, "ingress")) or "")


def test_a_failure_after_attaching_leaves_the_filter_claimed_and_delete_removes_it() -> None:
    from bpfshare.errors import KernelError

    node = Node()
    node.kernel.fail("pin_program", KernelError("pinning: ENOSPC", 28))
    report = node.run([bpfmap()], [bpfprog()])
    assert report.programs["count-ingress"].phase is Phase.Error
    assert len(node.kernel.tc_filters()) == 1, "attached before the failure"
    node.run([bpfmap()], [deleting(bpfprog())])
    assert node.kernel.tc_filters() == {} and node.kernel.live_programs() == []


def test_a_map_pinned_by_name_is_recorded_shown_and_removed_with_its_last_program() -> None:
    node = Node()
    legacy = obj("flow_counter_legacy.o")  # iproute2 pinning: PIN_GLOBAL_NS
    a = bpfprog("a", path=legacy, maps={})
    b = bpfprog("b", "count_egress", path=legacy, maps={}, attach=tc("eth0", direction="egress"))
    report = node.run([], [a, b])
    ready(report.programs["a"]), ready(report.programs["b"])
    globals_pin = PIN_ROOT / "tc" / "globals" / "shared_counts"
    assert node.kernel.exists(globals_pin)
    node.run([], [deleting(a), b])
    assert node.kernel.exists(globals_pin), "b still uses it"
    node.run([], [deleting(b)])
    assert not node.kernel.exists(globals_pin)
    assert node.kernel.live_maps() == []


def test_a_map_pinned_by_name_that_bpfshare_did_not_create_is_never_removed() -> None:
    node = Node()
    globals_pin = PIN_ROOT / "tc" / "globals" / "shared_counts"
    foreign_map(node, globals_pin)  # e.g. `bpfshare load` by hand
    prog = bpfprog(path=obj("flow_counter_legacy.o"), maps={})
    ready(node.run([], [prog]).programs["count-ingress"])
    node.run([], [deleting(prog)])
    assert node.kernel.exists(globals_pin)


def test_private_maps_named_like_bpfshares_own_pins_load_and_upgrade(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    """Private maps live under <program>/maps/, apart from the program's own pins (program, meta, links)."""
    source = """
        struct {
            __uint(type, BPF_MAP_TYPE_ARRAY);
            __type(key, __u32);
            __type(value, __u64);
            __uint(max_entries, 1);
        } program SEC(".maps"), meta SEC(".maps");

        SEC("tc")
        int count(struct __sk_buff *skb)
        {
            __u32 key = 0;
            __u64 *a = bpf_map_lookup_elem(&program, &key), *b = bpf_map_lookup_elem(&meta, &key);
            if (a && b)
                *a += *b + VERSION;
            return TC_ACT_OK;
        }
        char LICENSE[] SEC("license") = "GPL";
    """
    node = Node()
    v1 = bpfprog("p", "count", path=str(compile_bpf(source, "-DVERSION=1")), maps={})
    first = ready(node.run([], [v1]).programs["p"])
    assert first.program is not None and set(first.program.maps) == {"program", "meta"}
    private = PIN_ROOT / "programs" / "p" / "maps"
    assert node.kernel.list_dir(private) == ["meta", "program"]
    node.kernel.update(private / "program", bytes(4), b"\x07" * 8)
    v2 = bpfprog("p", "count", path=str(compile_bpf(source, "-DVERSION=2")), maps={})
    report = node.run([], [v2])
    second = ready(report.programs["p"])
    assert second.program_id != first.program_id and ("p", "Upgraded") in reasons(report)
    assert second.program is not None and second.program.maps == first.program.maps, "the same private maps"
    assert node.kernel.lookup(private / "program", bytes(4)) == b"\x07" * 8


def test_a_stale_slot_whose_filter_cannot_be_read_stays_claimed_and_goes_later() -> None:
    from bpfshare.errors import KernelError

    node = Node()
    node.kernel.add_interface("eth1")
    node.run([bpfmap()], [bpfprog(attach=tc("eth0", "eth1"))])
    real = node.kernel.tc_filter

    def eth1_unreadable(target: TcTarget):  # type: ignore[no-untyped-def]
        if target.interface == "eth1":
            raise KernelError("netlink: EBUSY", 16)
        return real(target)

    node.kernel.tc_filter = eth1_unreadable  # type: ignore[method-assign]
    node.run([bpfmap()], [bpfprog(attach=tc("eth0"))])
    assert "eth1:ingress@None 1:1" in node.kernel.tc_filters(), "could not tell: left as it was"
    node.kernel.tc_filter = real  # type: ignore[method-assign]
    node.run([bpfmap()], [bpfprog(attach=tc("eth0"))])
    assert list(node.kernel.tc_filters()) == ["eth0:ingress@None 1:1"], "the claim was kept, so it went later"


def test_a_map_pinned_by_name_onto_a_reserved_name_is_refused(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    """libbpf's pinning by name puts a map at <root>/<name>: a map named ``programs`` would land on
    bpfshare's own directory."""
    source = """
        struct {
            __uint(type, BPF_MAP_TYPE_ARRAY);
            __type(key, __u32);
            __type(value, __u64);
            __uint(max_entries, 1);
            __uint(pinning, LIBBPF_PIN_BY_NAME);
        } programs SEC(".maps");

        SEC("tc")
        int count(struct __sk_buff *skb)
        {
            __u32 key = 0;
            __u64 *value = bpf_map_lookup_elem(&programs, &key);
            if (value)
                __sync_fetch_and_add(value, 1);
            return TC_ACT_OK;
        }
        char LICENSE[] SEC("license") = "GPL";
    """
    node = Node()
    prog = bpfprog("p", "count", path=str(compile_bpf(source)), maps={})
    report = node.run([], [prog])
    entry = report.programs["p"]
    assert entry.phase is Phase.Error
    assert f"map 'programs' is pinned by name at {PIN_ROOT / 'programs'}, which bpfshare keeps for itself" in (
        entry.message
    )
    assert node.kernel.live_programs() == []


def test_a_map_breaking_the_kernels_rules_is_refused_at_plan_time_naming_every_rule() -> None:
    import dataclasses

    node = Node()
    # Built past the resource's own checks (the CRD refuses it too), as an older API server might let it in.
    ringbuf = dataclasses.replace(
        bpfmap("rb", pinName="rb", type="RingBuf", keySize=0, valueSize=0, maxEntries=4096), max_entries=5000
    )
    plan = node.plan([ringbuf], [])
    outcome = plan.maps[0].outcome
    assert outcome is not None and outcome.phase is Phase.Error and plan.maps[0].action is None
    assert "RingBuf needs maxEntries (its size in bytes) a power of 2" in outcome.message
    assert node.kernel.calls == [] and ready(node.run([bpfmap()], []).maps["flow-counts"])


def test_a_deep_cgroups_hashed_link_pin_is_found_again_and_removed_when_dropped() -> None:
    from bpfshare.load.attach import is_hashed_link_pin

    node = Node()
    deep = "/" + "/".join(["level-of-a-deep-hierarchy"] * 12)
    node.kernel.add_cgroup(deep)
    prog = bpfprog("cg", "count_cgroup_egress", attach=cgroup(deep))
    first = ready(node.run([bpfmap()], [prog]).programs["cg"])
    links = PIN_ROOT / "programs" / "cg" / "links"
    [name] = node.kernel.list_dir(links)
    assert is_hashed_link_pin(name)
    node.kernel.calls.clear()
    node.run([bpfmap()], [prog])
    assert node.kernel.calls == [], "the hashed pin was re-adopted, not attached twice"
    report = node.run([bpfmap()], [bpfprog("cg", "count_cgroup_egress", attach=cgroup("/"))])
    assert node.kernel.list_dir(links) != [name] and len(node.kernel.live_links()) == 1
    assert first.program is not None and ready(report.programs["cg"]).program_id == first.program_id
