"""Map definitions in every style: sizes, types, flags, pinning, map-in-map, and what is refused."""

from __future__ import annotations

import pytest

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object import read_collection
from bpfshare.spec import DefinitionStyle, Pinning
from bpfshare.types import MapFlag, MapType
from tests.fixtures.objects import CompileBpf

USE = """
SEC("tc") int use(struct __sk_buff *skb) {
    __u32 k = 0;
    %s
    return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""


def lookups(*maps: str) -> str:
    return USE % "".join(f"bpf_map_lookup_elem(&{m}, &k);" for m in maps)


def test_btf_maps(compile_bpf: CompileBpf) -> None:
    src = """
    typedef const volatile struct { __u64 a; __u32 b; } value_t;   /* 16 bytes with padding */
    typedef __u32 key_t;
    struct {
        __uint(type, BPF_MAP_TYPE_LRU_HASH);
        __uint(max_entries, 1024);
        __type(key, key_t);
        __type(value, value_t);
        __uint(map_flags, BPF_F_NO_COMMON_LRU);
    } typed SEC(".maps");
    struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(key_size, 12);
        __uint(value_size, 3);
        __uint(max_entries, 7);
        __uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG);
        __uint(pinning, LIBBPF_PIN_NONE);
        __uint(numa_node, 1);
    } sized SEC(".maps");
    struct {
        __uint(type, BPF_MAP_TYPE_RINGBUF);
        __uint(max_entries, 4096);
        __uint(pinning, LIBBPF_PIN_BY_NAME);
    } events SEC(".maps");
    struct {
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
        __uint(max_entries, 2);
        __type(key, int);
        __type(value, __u64[4]);
    } per_cpu SEC(".maps");
    """ + lookups("typed", "sized", "per_cpu")
    spec = read_collection(compile_bpf(src))
    assert set(spec.maps) == {"typed", "sized", "events", "per_cpu"}
    m = spec.maps
    assert (m["typed"].type, m["typed"].key_size, m["typed"].value_size, m["typed"].max_entries) == (
        MapType.LruHash,
        4,
        16,
        1024,
    )
    assert m["typed"].flags == MapFlag.NoCommonLru
    assert (m["sized"].type, m["sized"].key_size, m["sized"].value_size, m["sized"].max_entries) == (
        MapType.Hash,
        12,
        3,
        7,
    )
    assert m["sized"].flags == MapFlag.NoPrealloc | MapFlag.RdonlyProg
    assert m["sized"].pinning is Pinning.NONE
    assert dict(m["sized"].extra) == {"numa_node": 1}
    assert (m["events"].type, m["events"].key_size, m["events"].value_size, m["events"].pinning) == (
        MapType.RingBuf,
        0,
        0,
        Pinning.ByName,
    )
    assert (m["per_cpu"].key_size, m["per_cpu"].value_size) == (4, 32)
    assert all(x.style is DefinitionStyle.BTF for x in m.values())
    assert spec.programs["use"].map_names == ["typed", "sized", "per_cpu"]


def test_btf_map_in_map_and_prog_array(compile_bpf: CompileBpf) -> None:
    src = """
    struct inner {
        __uint(type, BPF_MAP_TYPE_ARRAY);
        __uint(max_entries, 8);
        __type(key, __u32);
        __type(value, __u64);
        __uint(map_flags, BPF_F_INNER_MAP);
    };
    struct {
        __uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
        __uint(max_entries, 4);
        __type(key, __u32);
        __uint(pinning, LIBBPF_PIN_BY_NAME);
        __array(values, struct inner);
    } outer SEC(".maps");
    struct {
        __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
        __uint(max_entries, 2);
        __uint(key_size, sizeof(__u32));
        __array(values, int (void *));
    } jumps SEC(".maps");
    """ + lookups("outer")
    spec = read_collection(compile_bpf(src))
    outer = spec.maps["outer"]
    assert (outer.type, outer.key_size, outer.value_size, outer.max_entries, outer.pinning) == (
        MapType.HashOfMaps,
        4,
        4,
        4,
        Pinning.ByName,
    )
    inner = outer.inner
    assert inner is not None
    assert (inner.name, inner.type, inner.key_size, inner.value_size, inner.max_entries, inner.flags) == (
        "outer.inner",
        MapType.Array,
        4,
        8,
        8,
        MapFlag.InnerMap,
    )
    jumps = spec.maps["jumps"]
    assert (jumps.type, jumps.key_size, jumps.value_size, jumps.inner) == (MapType.ProgArray, 4, 4, None)


def test_btf_map_initial_slots(compile_bpf: CompileBpf) -> None:
    """``.values = { [i] = &target }``: slot index -> program name (prog array) or map name (map-in-map)."""
    src = """
    SEC("tc") int target(struct __sk_buff *skb) { return 0; }
    SEC("tc") int other(struct __sk_buff *skb) { return 1; }
    struct inner { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
                   __type(key, __u32); __type(value, __u32); };
    struct inner in_a SEC(".maps"), in_b SEC(".maps");
    struct {
        __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
        __uint(max_entries, 4);
        __uint(key_size, sizeof(__u32));
        __array(values, int (void *));
    } jumps SEC(".maps") = { .values = { [1] = (void *)&target, [3] = (void *)&other } };
    struct {
        __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
        __uint(max_entries, 3);
        __type(key, __u32);
        __array(values, struct inner);
    } outer SEC(".maps") = { .values = { [0] = &in_b, [2] = &in_a } };
    SEC("tc") int entry(struct __sk_buff *skb) {
        __u32 k = 0;
        bpf_map_lookup_elem(&outer, &k);
        bpf_tail_call(skb, &jumps, 1);
        return 0;
    }
    char LICENSE[] SEC("license") = "GPL";
    """
    spec = read_collection(compile_bpf(src))
    assert spec.maps["jumps"].slots == ((1, "target"), (3, "other"))
    assert spec.maps["jumps"].slot_programs == ["target", "other"]
    assert spec.maps["outer"].slots == ((0, "in_b"), (2, "in_a"))
    assert spec.maps["outer"].slot_maps == ["in_b", "in_a"]
    assert not spec.refused_programs and not spec.refused_maps
    programs, maps = spec.load_closure("entry")
    assert programs == ["entry", "target", "other"]
    assert maps == ["outer", "in_b", "in_a", "jumps"]


def test_initial_slot_naming_a_refused_program_refuses_its_users(compile_bpf: CompileBpf) -> None:
    src = """
    struct ops { int (*init)(void *); };
    SEC("struct_ops/init") int init(void *ctx) { return 0; }
    SEC(".struct_ops") struct ops my_ops = { .init = (void *)init };
    SEC("tc") int loops(struct __sk_buff *skb) { return *(volatile int *)&my_ops; }
    struct {
        __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
        __uint(max_entries, 2);
        __uint(key_size, sizeof(__u32));
        __array(values, int (void *));
    } jumps SEC(".maps") = { .values = { [1] = (void *)&loops } };
    SEC("tc") int entry(struct __sk_buff *skb) { bpf_tail_call(skb, &jumps, 1); return 0; }
    SEC("tc") int alone(struct __sk_buff *skb) { return 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    spec = read_collection(compile_bpf(src))
    assert set(spec.programs) == {"alone"}
    with pytest.raises(
        UnsupportedError,
        match=r"^program 'entry' cannot be loaded: uses map 'jumps', whose slot 1 "
        r"names program 'loops', which cannot be loaded: unsupported: struct_ops maps",
    ):
        spec.program("entry")


def test_bad_initial_slots(compile_bpf: CompileBpf) -> None:
    """A slot libbpf would refuse refuses that map (and its users), by name."""
    src = """
    static __noinline int helper(struct __sk_buff *skb) { return skb->len; }
    SEC("tc") int entry(struct __sk_buff *skb) { return helper(skb); }
    struct {
        __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
        __uint(max_entries, 2);
        __uint(key_size, sizeof(__u32));
        __array(values, int (struct __sk_buff *));
    } jumps SEC(".maps") = { .values = { [0] = (void *)&helper } };
    SEC("tc") int use(struct __sk_buff *skb) { bpf_tail_call(skb, &jumps, 0); return 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    spec = read_collection(compile_bpf(src))
    assert "entry" in spec.programs
    assert "not an entry-point program" in spec.refused_maps["jumps"].reason
    with pytest.raises(ObjectError, match=r"uses map 'jumps', which cannot be loaded: map 'jumps': slot 0 names "):
        spec.program("use")


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        (
            "__uint(type, BPF_MAP_TYPE_ARRAY); __uint(key_size, 8); __type(key, __u32); __uint(max_entries, 1);",
            ObjectError,
            r"map 'bad' key: size 8 conflicts with its type's size 4",
        ),
        ("__uint(type, BPF_MAP_TYPE_ARRAY); __uint(colour, 3);", UnsupportedError, r"unknown field 'colour'"),
        ("__uint(type, BPF_MAP_TYPE_ARRAY); __uint(pinning, 2);", ObjectError, r"invalid pinning 2"),
        ("__uint(type, 4242);", UnsupportedError, r"map 'bad': unknown map type 4242"),
        ("int type;", ObjectError, r"map 'bad' field 'type': expected a pointer"),
    ],
)
def test_bad_btf_maps(compile_bpf: CompileBpf, body: str, error: type[Exception], match: str) -> None:
    src = f'struct {{ {body} }} bad SEC(".maps");' + lookups("bad")
    spec = read_collection(compile_bpf(src))  # refuses the map and the program using it, not the object
    assert set(spec.refused_maps) == {"bad"}
    with pytest.raises(
        error, match=r"program 'use' cannot be loaded: uses map 'bad', which cannot be loaded: .*" + match
    ):
        spec.program("use")


def test_btf_maps_need_btf(compile_bpf: CompileBpf) -> None:
    src = 'struct { __uint(type, BPF_MAP_TYPE_ARRAY); } nobtf SEC(".maps");' + lookups("nobtf")
    with pytest.raises(ObjectError, match=r"no \.BTF section"):
        read_collection(compile_bpf(src, debug=False))


LEGACY = """
#include "legacy_maps.h"
"""


def test_bpf_map_def(compile_bpf: CompileBpf) -> None:
    src = (
        LEGACY
        + """
    struct bpf_map_def SEC("maps") first = {
        .type = BPF_MAP_TYPE_PERCPU_HASH, .key_size = 16, .value_size = 24, .max_entries = 100,
        .map_flags = BPF_F_NO_PREALLOC,
    };
    struct bpf_map_def SEC("maps") second = {
        .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 8, .max_entries = 2,
    };
    """
        + lookups("second", "first")
    )
    for debug in (True, False):
        spec = read_collection(compile_bpf(src, debug=debug))
        first, second = spec.maps["first"], spec.maps["second"]
        assert (first.type, first.key_size, first.value_size, first.max_entries, first.flags) == (
            MapType.PercpuHash,
            16,
            24,
            100,
            MapFlag.NoPrealloc,
        )
        assert (second.type, second.key_size, second.value_size, second.max_entries) == (MapType.Array, 4, 8, 2)
        assert {first.style, second.style} == {DefinitionStyle.LIBBPF_LEGACY}
        assert first.pinning is second.pinning is Pinning.NONE
        assert spec.programs["use"].map_names == ["second", "first"]


def test_bpf_map_def_with_trailing_fields(compile_bpf: CompileBpf) -> None:
    """Older struct bpf_map_def variants (e.g. samples/bpf's, with inner_map_idx and numa_node) are
    read like libbpf did: the extra bytes must be zero."""
    template = """
    struct bpf_map_def_ext { unsigned int type, key_size, value_size, max_entries, map_flags, inner_map_idx,
                             numa_node; };
    struct bpf_map_def_ext SEC("maps") ext = { .type = BPF_MAP_TYPE_HASH, .key_size = 4, .value_size = 4,
                                               .max_entries = 3, .numa_node = %d };
    """
    spec = read_collection(compile_bpf(template % 0 + lookups("ext")))
    assert spec.maps["ext"].style is DefinitionStyle.LIBBPF_LEGACY
    assert spec.maps["ext"].max_entries == 3
    with pytest.raises(ObjectError, match=r"map 'ext' in section maps: definition of 28 bytes"):
        read_collection(compile_bpf(template % 1 + lookups("ext"))).program("use")


def test_odd_legacy_definition_size(compile_bpf: CompileBpf) -> None:
    src = """
    struct small { unsigned int type, key_size, value_size; };
    struct small SEC("maps") tiny = { .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4 };
    """ + lookups("tiny")
    with pytest.raises(ObjectError, match=r"map 'tiny' in section maps: definition of 12 bytes is neither"):
        read_collection(compile_bpf(src)).program("use")


def test_bpf_elf_map(compile_bpf: CompileBpf) -> None:
    src = (
        LEGACY
        + """
    struct bpf_elf_map SEC("maps") inner_tpl = {
        .type = BPF_MAP_TYPE_HASH, .size_key = 4, .size_value = 4, .max_elem = 16,
        .id = 7, .inner_idx = 0,
    };
    struct bpf_elf_map SEC("maps") outer = {
        .type = BPF_MAP_TYPE_ARRAY_OF_MAPS, .size_key = 4, .size_value = 4, .max_elem = 2,
        .inner_id = 7, .pinning = PIN_OBJECT_NS,
    };
    struct bpf_elf_map SEC("maps") global = {
        .type = BPF_MAP_TYPE_LPM_TRIE, .size_key = 8, .size_value = 4, .max_elem = 64,
        .flags = BPF_F_NO_PREALLOC, .pinning = PIN_GLOBAL_NS,
    };
    """
        + lookups("global", "outer")
    )
    spec = read_collection(compile_bpf(src))
    m = spec.maps
    assert {x.style for x in m.values()} == {DefinitionStyle.IPROUTE2_LEGACY}
    assert (
        m["global"].type,
        m["global"].key_size,
        m["global"].max_entries,
        m["global"].flags,
        m["global"].pinning,
    ) == (MapType.LpmTrie, 8, 64, MapFlag.NoPrealloc, Pinning.GlobalNS)
    assert m["outer"].pinning is Pinning.ObjectNS
    assert m["outer"].inner == m["inner_tpl"]
    assert m["outer"].slots == ((0, "inner_tpl"),)  # iproute2 puts the template at its inner_idx
    assert dict(m["inner_tpl"].extra) == {"id": 7, "inner_id": 0, "inner_idx": 0}
    assert dict(m["outer"].extra)["inner_id"] == 7
    assert spec.programs["use"].map_names == ["global", "outer"]


def test_bpf_elf_map_refusals(compile_bpf: CompileBpf) -> None:
    custom = (
        LEGACY
        + """
    struct bpf_elf_map SEC("maps") custom = { .type = BPF_MAP_TYPE_ARRAY, .size_key = 4, .size_value = 4,
                                              .max_elem = 1, .pinning = 42 };
    """
        + lookups("custom")
    )
    # A custom pinning value is the node's bpf_pinning file's business: read, kept raw, resolved at load.
    spec = read_collection(compile_bpf(custom))
    assert (spec.maps["custom"].pinning, spec.maps["custom"].custom_pinning) == (Pinning.Custom, 42)
    assert spec.maps["custom"].describe()["pinning"] == "42"
    dangling = (
        LEGACY
        + """
    struct bpf_elf_map SEC("maps") outer = { .type = BPF_MAP_TYPE_ARRAY_OF_MAPS, .size_key = 4,
                                             .size_value = 4, .max_elem = 1, .inner_id = 9 };
    """
        + lookups("outer")
    )
    with pytest.raises(ObjectError, match="names inner_id 9, but no other map has that id"):
        read_collection(compile_bpf(dangling)).program("use")


def test_btf_and_legacy_maps_in_one_object(compile_bpf: CompileBpf) -> None:
    src = (
        LEGACY
        + """
    struct {
        __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u32);
    } btf SEC(".maps");
    struct bpf_map_def SEC("maps") legacy = { .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4,
                                                    .max_entries = 1 };
    """
        + lookups("btf", "legacy")
    )
    spec = read_collection(compile_bpf(src))
    assert spec.maps["btf"].style is DefinitionStyle.BTF
    assert spec.maps["legacy"].style is DefinitionStyle.LIBBPF_LEGACY


def test_a_tail_call_cycle_loads_each_program_once(compile_bpf: CompileBpf) -> None:
    src = """
    struct jt {
        __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
        __uint(max_entries, 2);
        __uint(key_size, sizeof(__u32));
        __array(values, int (struct __sk_buff *));
    };
    extern struct jt loop SEC(".maps");
    SEC("tc") int again(struct __sk_buff *skb) { bpf_tail_call(skb, &loop, 0); return 0; }
    struct jt loop SEC(".maps") = { .values = { [0] = (void *)&again, [1] = (void *)&again } };
    char LICENSE[] SEC("license") = "GPL";
    """
    spec = read_collection(compile_bpf(src))
    assert spec.maps["loop"].slots == ((0, "again"), (1, "again"))
    assert spec.load_closure("again") == (["again"], ["loop"])
