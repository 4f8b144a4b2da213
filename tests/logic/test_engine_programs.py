"""Engine decisions about BpfPrograms, on the memory kernel: load, attach, upgrade, repair, detach, remove."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bpfshare.api.status import Phase
from bpfshare.api.targets import TcTarget
from bpfshare.engine.plan import Attach, Detach
from bpfshare.errors import KernelError

from .enginekit import PIN_ROOT, Node, bpfmap, bpfprog, cgroup, changes, deleting, obj, ready, reasons, tc, tcx

PROG_DIR = PIN_ROOT / "programs" / "count-ingress"
MAP_PIN = PIN_ROOT / "maps" / "flow-counts"
SLOT = "eth0:ingress@None 1:1"


@pytest.fixture
def copy_of(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A copy of an object with bytes appended: the same programs, another digest (a new version)."""

    def make(name: str, extra: bytes = b"") -> str:
        target = tmp_path / f"{len(list(tmp_path.iterdir()))}-{name}"
        shutil.copy(obj(name), target)
        with target.open("ab") as f:
            f.write(extra)
        return str(target)

    return make


def test_first_pass_plans_a_load_and_the_attachments_then_does_them() -> None:
    node = Node()
    plan = node.plan([bpfmap()], [bpfprog()])
    pp = plan.programs[0]
    assert pp.load is not None and pp.load.reason == "first load"
    assert pp.attach == [Attach(TcTarget("eth0", "ingress"))]
    assert node.kernel.calls == []
    report = node.engine.apply(plan)
    entry = ready(report.programs["count-ingress"])
    assert entry.program is not None
    assert entry.program.maps == {"shared_counts": report.maps["flow-counts"].map_id}
    assert [a.to_dict() for a in entry.program.attachments] == [{"target": "tc:eth0:ingress", "handle": "1:1"}]
    assert node.kernel.tc_filters()[SLOT].prog_id == entry.program_id
    assert node.kernel.program_at(PROG_DIR / "program") is not None
    assert reasons(report) == [("flow-counts", "Created"), ("count-ingress", "Loaded"), ("count-ingress", "Attached")]
    assert len(report.kernel_load_seconds) == 1


def test_an_unchanged_program_is_neither_reloaded_nor_reattached() -> None:
    node = Node()
    first = node.run([bpfmap()], [bpfprog()])
    node.kernel.calls.clear()
    report = node.run([bpfmap()], [bpfprog()])
    assert node.kernel.calls == []
    assert report.events == []
    # The same status as the pass that did the work, though this one asked the kernel for nothing.
    assert report.programs["count-ingress"].to_dict("n", 1) == first.programs["count-ingress"].to_dict("n", 1)


def test_a_restarted_agent_re_adopts_what_runs_and_attaches_nothing_twice() -> None:
    node = Node()
    progs = [bpfprog(), bpfprog("tcx-in", "count_tcx_ingress", attach=tcx("eth0"))]
    first = node.run([bpfmap()], progs)
    links = node.kernel.live_links()
    node.restart_agent()
    node.kernel.calls.clear()
    report = node.run([bpfmap()], progs, complete=True)
    assert node.kernel.calls == []
    assert node.kernel.live_links() == links
    assert {n: e.program_id for n, e in report.programs.items()} == {n: e.program_id for n, e in first.programs.items()}


def test_new_bytecode_is_an_in_place_upgrade_on_the_same_slot_and_frees_the_old_program(copy_of) -> None:  # type: ignore[no-untyped-def]
    node = Node()
    first = node.run([bpfmap()], [bpfprog()])
    old = first.programs["count-ingress"].program_id
    plan = node.plan([bpfmap()], [bpfprog(path=copy_of("flow_counter.o", b"v2"), generation=2)])
    assert plan.programs[0].load is not None and plan.programs[0].load.reason == "upgrade: new bytecode"
    report = node.engine.apply(plan)
    new = ready(report.programs["count-ingress"]).program_id
    assert new != old
    assert node.kernel.tc_filters()[SLOT].prog_id == new
    assert old not in node.kernel.live_programs()
    assert ("count-ingress", "Upgraded") in reasons(report)


def test_an_upgrade_keeps_the_shared_maps_contents(copy_of) -> None:  # type: ignore[no-untyped-def]
    node = Node()
    node.run([bpfmap()], [bpfprog()])
    node.kernel.update(MAP_PIN, bytes(4), b"\x2a" * 8)
    node.run([bpfmap()], [bpfprog(path=copy_of("flow_counter.o", b"v2"))])
    assert node.kernel.lookup(MAP_PIN, bytes(4)) == b"\x2a" * 8


def test_a_filter_deleted_by_hand_is_repaired_without_a_reload() -> None:
    node = Node()
    first = node.run([bpfmap()], [bpfprog()])
    node.kernel.detach_tc(TcTarget("eth0", "ingress"))
    plan = node.plan([bpfmap()], [bpfprog()])
    assert plan.programs[0].load is None
    assert plan.programs[0].attach == [Attach(TcTarget("eth0", "ingress"), repair=True)]
    assert changes(plan)[-1] == "BpfProgram count-ingress: re-attach to tc:eth0:ingress"
    report = node.engine.apply(plan)
    assert node.kernel.tc_filters()[SLOT].prog_id == first.programs["count-ingress"].program_id
    assert [r for n, r in reasons(report) if n == "count-ingress"] == ["Repaired"]


def test_a_recreated_interface_gets_a_new_tcx_link_for_the_same_program() -> None:
    node = Node()
    prog = bpfprog("tcx-in", "count_tcx_ingress", attach=tcx("eth0"))
    first = node.run([bpfmap()], [prog])
    old_link = first.programs["tcx-in"].program
    node.kernel.remove_interface("eth0")
    node.kernel.add_interface("eth0")
    report = node.run([bpfmap()], [prog])
    entry = ready(report.programs["tcx-in"])
    assert entry.program_id == first.programs["tcx-in"].program_id
    assert entry.program is not None and old_link is not None
    assert entry.program.attachments[0].link_id != old_link.attachments[0].link_id
    assert len(node.kernel.live_links()) == 1
    assert ("tcx-in", "Repaired") in reasons(report)


def test_a_program_waits_while_its_map_is_not_ready_and_names_why() -> None:
    node = Node()
    node.run([bpfmap()], [])
    report = node.run([bpfmap(valueSize=16, generation=2)], [bpfprog()])
    entry = report.programs["count-ingress"]
    assert entry.phase is Phase.Pending
    assert "waiting for BpfMap flow-counts (spec.maps.shared_counts) to be Ready" in entry.message
    assert "ValueSize: 8 changed to 16" in entry.message
    assert node.kernel.live_programs() == []


def test_a_program_alone_waits_for_the_default_pin_of_its_map() -> None:
    report = Node().run([], [bpfprog()])
    assert report.programs["count-ingress"].phase is Phase.Pending
    assert "not on this node" in report.programs["count-ingress"].message


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"path": "/nonexistent/x.o"}, "spec.bytecode (path /nonexistent/x.o)"),
        ({"program": "no_such_program"}, "spec.program"),
        ({"program": "count_cgroup_egress"}, "cannot attach to tc:eth0:ingress"),
        ({"maps": {"no_such_map": "flow-counts"}}, "no map named no_such_map"),
    ],
)
def test_a_bad_program_is_an_error_naming_the_cause_and_the_map_still_converges(
    change: dict[str, object], words: str
) -> None:
    node = Node()
    report = node.run([bpfmap()], [bpfprog(**change)])  # type: ignore[arg-type]
    entry = report.programs["count-ingress"]
    assert entry.phase is Phase.Error
    assert words in entry.message
    ready(report.maps["flow-counts"])
    assert [e.type for e in report.events if e.reason == "Failed"] == ["Warning"]


def test_a_verifier_refusal_carries_the_verifiers_words_and_attaches_nothing() -> None:
    node = Node()
    node.kernel.reject("count_ingress", "R1 invalid mem access 'scalar'")
    report = node.run([bpfmap()], [bpfprog()])
    assert "R1 invalid mem access 'scalar'" in report.programs["count-ingress"].message
    assert node.kernel.tc_filters() == {}
    assert not node.kernel.exists(PROG_DIR / "program")


def test_a_missing_interface_is_named_and_other_programs_still_converge() -> None:
    node = Node()
    report = node.run([bpfmap()], [bpfprog(attach=tc("eth9")), bpfprog("ok", attach=tc("eth0", priority=2))])
    assert report.programs["count-ingress"].phase is Phase.Error
    assert "interface eth9 not found" in report.programs["count-ingress"].message
    ready(report.programs["ok"])


def test_a_target_dropped_from_spec_is_detached_and_a_foreign_filter_left_alone() -> None:
    node = Node()
    node.kernel.add_interface("eth1")
    node.run([bpfmap()], [bpfprog(attach=tc("eth0", "eth1"))])
    plan = node.plan([bpfmap()], [bpfprog(attach=tc("eth0"))])
    assert plan.programs[0].detach == [Detach(TcTarget("eth1", "ingress"))]
    node.engine.apply(plan)
    assert list(node.kernel.tc_filters()) == [SLOT]

    node.run([bpfmap()], [bpfprog(attach=tc("eth0", "eth1"))])
    node.kernel.add_foreign_tc_filter(TcTarget("eth1", "ingress"), prog_id=999_999)  # another tool took the slot
    report = node.run([bpfmap()], [bpfprog(attach=tc("eth0"))])
    assert node.kernel.tc_filters()["eth1:ingress@None 1:1"].prog_id == 999_999
    assert not any(r == "Detached" for _, r in reasons(report))


def test_a_link_target_dropped_from_spec_has_its_link_unpinned() -> None:
    node = Node()
    node.kernel.add_cgroup("/a")
    prog = bpfprog("cg", "count_cgroup_egress", attach=cgroup("/"))
    node.run([bpfmap()], [prog])
    moved = bpfprog("cg", "count_cgroup_egress", attach=cgroup("/a"))
    plan = node.plan([bpfmap()], [moved])
    assert [d.target.key for d in plan.programs[0].detach] == ["cgroup:/:egress"]
    report = node.engine.apply(plan)
    assert len(node.kernel.live_links()) == 1
    entry = ready(report.programs["cg"])
    assert entry.program is not None and entry.program.attachments[0].target == "cgroup:/a:egress"


def test_a_missing_cgroup_is_an_error_naming_it() -> None:
    node = Node()
    report = node.run([bpfmap()], [bpfprog("cg", "count_cgroup_egress", attach=cgroup("/gone"))])
    assert report.programs["cg"].phase is Phase.Error
    assert "/gone" in report.programs["cg"].message


def test_deleting_a_program_detaches_everything_and_removes_its_directory() -> None:
    node = Node()
    progs = [bpfprog(), bpfprog("cg", "count_cgroup_egress", attach=cgroup("/"))]
    node.run([bpfmap()], progs)
    report = node.run([bpfmap()], [deleting(p) for p in progs])
    assert {("BpfProgram", "count-ingress"), ("BpfProgram", "cg")} <= report.released
    assert node.kernel.tc_filters() == {}
    assert node.kernel.live_links() == []
    assert node.kernel.list_dir(PIN_ROOT / "programs") == []
    assert node.kernel.live_programs() == []
    ready(report.maps["flow-counts"])


def test_an_orphan_program_directory_goes_only_with_a_complete_view() -> None:
    node = Node()
    node.run([bpfmap()], [bpfprog()])
    partial = node.plan([bpfmap()], [])
    assert partial.removals == []
    complete = node.plan([bpfmap()], [], complete=True)
    assert [r.name for r in complete.removals if r.action is not None] == ["count-ingress"]
    assert "no BpfProgram names it" in changes(complete)[0]


def test_only_the_programs_named_are_rechecked() -> None:
    node = Node()
    progs = [bpfprog(), bpfprog("other", attach=tc("eth0", priority=2))]
    node.run([bpfmap()], progs)
    node.kernel.detach_tc(TcTarget("eth0", "ingress", priority=2))
    report = node.run([bpfmap()], progs, only_programs={"count-ingress"})
    assert set(report.programs) == {"count-ingress"}
    assert "eth0:ingress@None 2:1" not in node.kernel.tc_filters(), "the other program was not looked at"


def test_a_recreated_map_makes_its_programs_reload_onto_it() -> None:
    node = Node()
    node.run([bpfmap()], [bpfprog()])
    node.kernel.reboot()
    plan = node.plan([bpfmap()], [bpfprog()])
    assert plan.programs[0].load is not None and plan.programs[0].load.reason == "first load"
    report = node.engine.apply(plan)
    entry = ready(report.programs["count-ingress"])
    assert entry.program is not None
    assert entry.program.maps["shared_counts"] == report.maps["flow-counts"].map_id


def test_a_map_unpinned_and_gone_between_passes_reloads_the_program_onto_the_new_map() -> None:
    node = Node()
    first = node.run([bpfmap()], [bpfprog()])
    node.run([bpfmap()], [deleting(bpfprog())])
    node.kernel.unpin(MAP_PIN)  # nothing holds it now: freed
    report = node.run([bpfmap()], [bpfprog()])
    new_map = report.maps["flow-counts"].map_id
    assert new_map != first.maps["flow-counts"].map_id
    entry = ready(report.programs["count-ingress"])
    assert entry.program is not None and entry.program.maps["shared_counts"] == new_map


def test_a_failed_record_write_is_an_error_and_the_next_pass_recovers() -> None:
    node = Node()
    node.run([bpfmap()], [])
    node.kernel.fail("write_record", KernelError("program record: ENOSPC", 28))
    report = node.run([bpfmap()], [bpfprog()])
    assert report.programs["count-ingress"].phase is Phase.Error
    assert "ENOSPC" in report.programs["count-ingress"].message
    again = node.run([bpfmap()], [bpfprog()])
    ready(again.programs["count-ingress"])
    assert len(node.kernel.live_programs()) == 1


def test_temporary_pins_of_a_killed_agent_are_swept_on_the_first_pass_only() -> None:
    node = Node()
    node.run([bpfmap()], [bpfprog()])
    program = node.kernel.open_program(PROG_DIR / "program")
    node.kernel.pin_program(program, PROG_DIR / "program_tmp4242")
    program.handle.close()
    node.run([bpfmap()], [bpfprog()])
    assert node.kernel.exists(PROG_DIR / "program_tmp4242"), "a running engine never sweeps"
    node.restart_agent()
    node.run([bpfmap()], [bpfprog()])
    assert not node.kernel.exists(PROG_DIR / "program_tmp4242")
    assert node.kernel.exists(PROG_DIR / "program")


def test_a_legacy_map_definition_shares_the_btf_declared_map() -> None:
    node = Node()
    progs = [bpfprog(), bpfprog("cg", "count_cgroup_egress", path=obj("cgroup_counter_mapdef.o"), attach=cgroup())]
    report = node.run([bpfmap()], progs)
    ids = {n: (e.program.maps if e.program else {}) for n, e in report.programs.items()}
    assert ids["cg"]["shared_counts"] == ids["count-ingress"]["shared_counts"] == report.maps["flow-counts"].map_id


def test_global_data_gets_fresh_private_maps_per_version(copy_of) -> None:  # type: ignore[no-untyped-def]
    node = Node()
    prog = bpfprog("features", "count_features", path=obj("features.o"))
    first = ready(node.run([bpfmap()], [prog]).programs["features"])
    upgraded = bpfprog("features", "count_features", path=copy_of("features.o", b"v2"))
    second = ready(node.run([bpfmap()], [upgraded]).programs["features"])
    assert first.program is not None and second.program is not None
    assert first.program.maps["shared_counts"] == second.program.maps["shared_counts"]
    assert first.program.maps[".rodata"] != second.program.maps[".rodata"]
