"""The shipped examples (bpf/*.c) read into the specs the loader and the integration tests rely on."""

from __future__ import annotations

import re
import timeit

import pytest

from bpfshare.object import read_collection
from bpfshare.spec import DefinitionStyle, MapSpec, Pinning, RelocationKind
from bpfshare.types import AttachType, MapFlag, MapType, ProgType
from tests.fixtures.objects import BpfObjects
from tests.unit.bpfasm import LD_IMM64, calls, decode, function_code, normalized, readelf_symbols, run

SHARED_COUNTS = (MapType.Array, 4, 8, 4, MapFlag(0))


def layout(spec: MapSpec) -> tuple[MapType, int, int, int, MapFlag]:
    return (spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags)


def test_flow_counter(bpf_objects: BpfObjects) -> None:
    spec = read_collection(bpf_objects["flow_counter"])
    assert spec.license == "GPL"
    assert {name: (p.section, p.type, p.expected_attach_type) for name, p in spec.programs.items()} == {
        "count_ingress": ("tc", ProgType.SchedCls, None),
        "count_egress": ("tc", ProgType.SchedCls, None),
        "count_tcx_ingress": ("tcx/ingress", ProgType.SchedCls, AttachType.TcxIngress),
        "count_cgroup_ingress": ("cgroup_skb/ingress", ProgType.CgroupSkb, AttachType.CgroupInetIngress),
        "count_cgroup_egress": ("cgroup_skb/egress", ProgType.CgroupSkb, AttachType.CgroupInetEgress),
    }
    (shared,) = spec.maps.values()
    assert shared.name == "shared_counts"
    assert layout(shared) == SHARED_COUNTS
    assert (shared.pinning, shared.style, shared.section) == (Pinning.ByName, DefinitionStyle.BTF, ".maps")
    for prog in spec.programs.values():
        assert prog.map_names == ["shared_counts"]
        assert prog.license == "GPL"


def test_legacy_flavours(bpf_objects: BpfObjects) -> None:
    legacy = read_collection(bpf_objects["flow_counter_legacy"])
    shared = legacy.maps["shared_counts"]
    assert layout(shared) == SHARED_COUNTS
    assert (shared.pinning, shared.style, shared.section) == (Pinning.GlobalNS, DefinitionStyle.IPROUTE2_LEGACY, "maps")
    assert dict(shared.extra) == {"id": 0, "inner_id": 0, "inner_idx": 0}
    assert {n: (p.section, p.type) for n, p in legacy.programs.items()} == {
        "count_ingress": ("classifier/ingress", ProgType.SchedCls),
        "count_egress": ("classifier/egress", ProgType.SchedCls),
    }

    mapdef = read_collection(bpf_objects["cgroup_counter_mapdef"])
    shared = mapdef.maps["shared_counts"]
    assert layout(shared) == SHARED_COUNTS
    assert (shared.pinning, shared.style) == (Pinning.NONE, DefinitionStyle.LIBBPF_LEGACY)
    assert {n: p.expected_attach_type for n, p in mapdef.programs.items()} == {
        "count_cgroup_ingress": AttachType.CgroupInetIngress,
        "count_cgroup_egress": AttachType.CgroupInetEgress,
    }

    tc = read_collection(bpf_objects["flow_counter_tc"])
    assert layout(tc.maps["shared_counts"]) == SHARED_COUNTS
    assert tc.maps["shared_counts"].pinning is Pinning.ByName
    assert set(tc.programs) == {"count_ingress", "count_egress"}


def test_programs_without_calls_are_their_symbols(bpf_objects: BpfObjects) -> None:
    """A program that calls nothing is exactly its function's bytes; relocations sit on ld_imm64."""
    for name in ("flow_counter", "flow_counter_legacy", "cgroup_counter_mapdef", "flow_counter_tc"):
        path = bpf_objects[name]
        spec = read_collection(path)
        for prog in spec.programs.values():
            original = function_code(path, prog.section, prog.name)
            assert normalized(prog.instructions) == normalized(original)
            assert len(prog.instructions) == readelf_symbols(path)[prog.name][1]
            for rel in prog.relocations:
                assert prog.instructions[rel.insn * 8] == LD_IMM64
                assert rel.kind is RelocationKind.MAP_FD


def test_relocations_match_llvm_objdump(bpf_objects: BpfObjects) -> None:
    path = bpf_objects["flow_counter"]
    listing = run("llvm-objdump", "-r", str(path))
    # "RELOCATION RECORDS FOR [tc]:" then "0000000000000020 R_BPF_64_64 shared_counts"
    relocs: dict[str, list[int]] = {}
    section = ""
    for line in listing.splitlines():
        if m := re.match(r"RELOCATION RECORDS FOR \[(.*)\]:", line):
            section = m.group(1)
        elif m := re.match(r"([0-9a-f]{16}) R_BPF_64_64\s+shared_counts", line):
            relocs.setdefault(section, []).append(int(m.group(1), 16) // 8)
    spec = read_collection(path)
    starts = readelf_symbols(path)
    for sec, offsets in relocs.items():
        progs = [p for p in spec.programs.values() if p.section == sec]
        found = sorted(r.insn + starts[p.name][0] // 8 for p in progs for r in p.relocations)
        assert found == sorted(offsets), sec


def test_features_global_data_and_calls(bpf_objects: BpfObjects) -> None:
    path = bpf_objects["features"]
    spec = read_collection(path)
    assert list(spec.programs) == ["count_features"]
    prog = spec.programs["count_features"]

    rodata, data, bss = spec.maps[".rodata"], spec.maps[".data"], spec.maps[".bss"]
    for m in (rodata, data, bss):
        assert (m.type, m.key_size, m.max_entries) == (MapType.Array, 4, 1)
        assert m.style is DefinitionStyle.GLOBAL_DATA
    assert (rodata.value_size, rodata.flags, rodata.contents) == (4, MapFlag.RdonlyProg, b"\0\0\0\0")
    assert (data.value_size, data.flags, data.contents) == (4, MapFlag(0), (1).to_bytes(4, "little"))
    assert (bss.value_size, bss.contents) == (8, bytes(8))
    assert layout(spec.maps["shared_counts"]) == SHARED_COUNTS

    # The program, then account() (which it calls), then bump() (which account() calls), once each.
    main = function_code(path, "tc", "count_features")
    account = function_code(path, ".text", "account")
    bump = function_code(path, ".text", "bump")
    code = prog.instructions
    assert len(code) == len(main) + len(account) + len(bump)
    n_main, n_account = len(main) // 8, len(account) // 8
    assert normalized(code) == normalized(main + account + bump)
    assert calls(code) == [(1, n_main), (n_main + 10, n_main + n_account)]

    by_map = {r.map_name: r for r in prog.relocations}
    assert set(by_map) == {".rodata", ".data", ".bss", "shared_counts"}
    for rel in prog.relocations:
        assert code[rel.insn * 8] == LD_IMM64
        assert n_main <= rel.insn  # all references are in the subprograms
    assert by_map["shared_counts"].insn >= n_main + n_account  # inside bump()
    assert by_map["shared_counts"].kind is RelocationKind.MAP_FD
    for name in (".rodata", ".data", ".bss"):
        assert (by_map[name].kind, by_map[name].offset) == (RelocationKind.MAP_VALUE, 0)


def test_binding_fds(bpf_objects: BpfObjects) -> None:
    """The spec's relocations are what instructions_with_fds needs: every map reference is bound."""
    prog = read_collection(bpf_objects["features"]).programs["count_features"]
    fds = {name: 100 + i for i, name in enumerate(prog.map_names)}
    insns = decode(prog.instructions_with_fds(fds))
    for rel in prog.relocations:
        assert insns[rel.insn].src == int(rel.kind)
        assert insns[rel.insn].imm == fds[rel.map_name]
    loads = [i for i, ins in enumerate(insns) if ins.op == LD_IMM64]
    assert sorted(r.insn for r in prog.relocations) == loads


def test_shared_counts_is_compatible_across_styles(bpf_objects: BpfObjects) -> None:
    layouts = {
        name: layout(read_collection(bpf_objects[name]).maps["shared_counts"])
        for name in ("flow_counter", "flow_counter_legacy", "cgroup_counter_mapdef", "flow_counter_tc", "features")
    }
    assert set(layouts.values()) == {SHARED_COUNTS}, layouts


@pytest.mark.parametrize("name", ["flow_counter", "flow_counter_legacy", "cgroup_counter_mapdef", "features"])
def test_parse_time_under_2ms(bpf_objects: BpfObjects, name: str) -> None:
    data = bpf_objects[name].read_bytes()
    best = min(timeit.repeat(lambda: read_collection(data), number=5, repeat=20)) / 5
    assert best < 0.002, f"{name}: {best * 1e3:.2f} ms"


def test_every_example_is_read(bpf_objects: BpfObjects) -> None:
    for path in bpf_objects.paths():
        spec = read_collection(path)
        assert spec.programs, path.name
        assert spec.maps or path.name.startswith("core_"), path.name  # the CO-RE examples use no map
        assert read_collection(path.read_bytes()) == spec
