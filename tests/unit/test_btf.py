"""The BTF reader, checked against bpftool's own decoding of the same objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bpfshare.errors import ObjectError
from bpfshare.object.btf import Btf, Kind
from bpfshare.object.elf import ElfObject
from tests.fixtures.objects import BpfObjects, CompileBpf
from tests.unit.bpfasm import run

KINDS = """
typedef unsigned long long u64_t;
union either { __u32 small; u64_t big; };
enum colour { RED, GREEN = 5, BLUE };
struct fwd_only;
struct everything {
    const volatile u64_t *restrict ptr;
    union either e;
    enum colour c;
    struct fwd_only *f;
    float ratio;
    int __attribute__((btf_type_tag("user"))) *tagged;
    char name[3][5];
    int (*callback)(int, char);
} __attribute__((btf_decl_tag("holder")));
struct everything global_everything SEC(".data.everything");
SEC("tc") int touch(struct __sk_buff *skb) { return global_everything.name[1][2]; }
char LICENSE[] SEC("license") = "GPL";
"""


def load(path: Path) -> Btf:
    elf = ElfObject(path.read_bytes())
    return Btf(elf.data(elf.by_name[".BTF"]))


def bpftool_types(path: Path) -> list[dict[str, object]]:
    return list(json.loads(run("bpftool", "-j", "btf", "dump", "file", str(path)))["types"])


def check_against_bpftool(path: Path) -> set[str]:
    btf = load(path)
    expected = bpftool_types(path)
    assert len(btf.types) - 1 == len(expected)
    for want in expected:
        t = btf.type(int(want["id"]))  # type: ignore[call-overload]
        assert t.kind.name == want["kind"], want
        assert (btf.name(t) or "(anon)") == want["name"], want
        if "size" in want and t.kind is not Kind.DATASEC:
            assert btf.size(t.id) == want["size"], want
        if t.kind is Kind.ARRAY:
            assert btf.array(t) == (want["type_id"], want["index_type_id"], want["nr_elems"])
        if t.kind in (Kind.STRUCT, Kind.UNION):
            members = want["members"]
            assert [(m.name or "(anon)", m.type, m.offset) for m in btf.members(t)] == [
                (m["name"], m["type_id"], m["bits_offset"])
                for m in members  # type: ignore[attr-defined]
            ]
        if t.kind is Kind.DATASEC:
            assert [(v.type, v.offset, v.size) for v in btf.secinfo(t)] == [
                (v["type_id"], v["offset"], v["size"])
                for v in want["vars"]  # type: ignore[attr-defined]
            ]
    return {str(w["kind"]) for w in expected}


def test_examples_match_bpftool(bpf_objects: BpfObjects) -> None:
    for path in bpf_objects.paths():
        check_against_bpftool(path)


def test_every_kind_matches_bpftool(compile_bpf: CompileBpf) -> None:
    kinds = check_against_bpftool(compile_bpf(KINDS))
    assert {
        "INT",
        "PTR",
        "ARRAY",
        "STRUCT",
        "UNION",
        "ENUM",
        "FWD",
        "TYPEDEF",
        "VOLATILE",
        "CONST",
        "RESTRICT",
        "FUNC",
        "FUNC_PROTO",
        "VAR",
        "DATASEC",
        "FLOAT",
        "DECL_TAG",
        "TYPE_TAG",
    } <= kinds


def test_sizes_through_modifiers(compile_bpf: CompileBpf) -> None:
    btf = load(compile_bpf(KINDS))
    everything = next(t for t in btf.types if t.kind is Kind.STRUCT and btf.name(t) == "everything")
    members = {m.name: m.type for m in btf.members(everything)}
    assert btf.size(members["name"]) == 15
    assert btf.size(members["e"]) == 8
    assert btf.size(members["ptr"]) == 8
    ptr = btf.skip_mods(members["ptr"])  # restrict -> pointer
    assert ptr.kind is Kind.PTR
    target = btf.skip_mods(ptr.size_or_type)  # const, volatile, typedef -> unsigned long long
    assert (target.kind, btf.name(target), btf.size(target.id)) == (Kind.INT, "unsigned long long", 8)
    var = next(t for t in btf.types if t.kind is Kind.VAR and btf.name(t) == "global_everything")
    assert btf.size(var.id) == btf.size(everything.id)
    with pytest.raises(ObjectError, match="has no size"):
        btf.size(next(t for t in btf.types if t.kind is Kind.FWD).id)


def test_malformed_btf() -> None:
    with pytest.raises(ObjectError, match="shorter than the BTF header"):
        Btf(b"\x9f\xeb")
    with pytest.raises(ObjectError, match="bad magic"):
        Btf(bytes(24))
    header = bytes.fromhex("9feb0100") + (24).to_bytes(4, "little")
    # one INT record cut short
    types = (0).to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + (4).to_bytes(4, "little")
    sections = b"".join(x.to_bytes(4, "little") for x in (0, len(types), len(types), 1))
    with pytest.raises(ObjectError, match="type #1 extends beyond"):
        Btf(header + sections + types + b"\0")
    # a typedef pointing at itself
    loop = (0).to_bytes(4, "little") + (8 << 24).to_bytes(4, "little") + (1).to_bytes(4, "little")
    sections = b"".join(x.to_bytes(4, "little") for x in (0, len(loop), len(loop), 1))
    btf = Btf(header + sections + loop + b"\0")
    with pytest.raises(ObjectError, match="too long"):
        btf.size(1)
    with pytest.raises(ObjectError, match="out of range"):
        btf.type(2)
