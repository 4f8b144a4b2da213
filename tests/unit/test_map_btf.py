"""Maps' BTF in the spec: the key and value type IDs of BTF maps (libbpf's btf_key_type_id /
btf_value_type_id), global data maps' DATASEC, none for legacy maps, the fields only BTF describes
(timers, spin locks, kptrs), and none of it in the spec's equality or the compatibility check."""

from __future__ import annotations

import dataclasses

import pytest

from bpfshare.errors import UnsupportedError
from bpfshare.kernel.compat import map_differences
from bpfshare.kernel.maps import MapInfo, takes_btf
from bpfshare.object import read_collection
from bpfshare.object.btf import Btf, Kind
from bpfshare.object.link_inputs import LinkInputs
from bpfshare.spec import DefinitionStyle, MapSpec, map_rule_violations
from bpfshare.types import MapFlag, MapType
from tests.fixtures.objects import BpfObjects, CompileBpf
from tests.unit.test_maps import lookups


def named(btf: Btf, type_id: int) -> str:
    t = btf.type(type_id)
    return f"{t.kind.name} {btf.name(t)}"


def test_btf_map_carries_its_key_and_value_types(bpf_objects: BpfObjects) -> None:
    spec = read_collection(bpf_objects["callback_timer"])
    timers = spec.maps["timers"]
    assert timers.btf is not None
    btf = Btf(timers.btf)  # the sanitized BTF the kernel is given, the IDs unchanged
    assert named(btf, timers.btf_key_type_id) == "TYPEDEF __u32"
    assert named(btf, timers.btf_value_type_id) == "STRUCT timer_value"
    assert timers.btf_fields == ("struct bpf_timer at offset 8",)
    # One BTF for the object: the maps' and the program's (func_info for the callback) are the same.
    program = spec.programs["arm_timer"]
    assert program.btf == timers.btf == spec.maps["fired"].btf
    assert spec.maps["fired"].btf_fields == ()
    assert takes_btf(timers)


def test_spin_lock_in_a_hash_value(bpf_objects: BpfObjects) -> None:
    locked = read_collection(bpf_objects["map_spin_lock"]).maps["locked"]
    assert locked.btf is not None
    assert named(Btf(locked.btf), locked.btf_value_type_id) == "STRUCT locked_value"
    assert locked.btf_fields == ("struct bpf_spin_lock at offset 8",)
    # The program has no callback: it is loaded without BTF, as before.
    assert read_collection(bpf_objects["map_spin_lock"]).programs["count_locked"].btf is None


def test_legacy_maps_have_no_btf(bpf_objects: BpfObjects) -> None:
    for example, style in (
        ("flow_counter_legacy", DefinitionStyle.IPROUTE2_LEGACY),
        ("cgroup_counter_mapdef", DefinitionStyle.LIBBPF_LEGACY),
    ):
        spec = read_collection(bpf_objects[example]).maps["shared_counts"]
        assert spec.style is style
        assert (spec.btf_key_type_id, spec.btf_value_type_id, spec.btf, spec.btf_fields) == (0, 0, None, ())
        assert not takes_btf(spec)


def test_global_data_maps_take_their_datasec(bpf_objects: BpfObjects) -> None:
    """libbpf's map_fill_btf_type_info: no key type, the section's DATASEC as value."""
    maps = read_collection(bpf_objects["features"]).maps
    data = [m for m in maps.values() if m.style is DefinitionStyle.GLOBAL_DATA]
    assert {m.name for m in data} >= {".rodata", ".data", ".bss"}
    for spec in data:
        if spec.name not in (".rodata", ".data", ".bss"):
            continue
        assert spec.btf is not None and spec.btf_key_type_id == 0
        btf = Btf(spec.btf)
        datasec = btf.type(spec.btf_value_type_id)
        assert (datasec.kind, btf.name(datasec)) == (Kind.DATASEC, spec.name)
        assert datasec.size_or_type == spec.value_size  # sanitized: the kernel checks the sizes agree


def test_type_ids_only_from_types_that_size_the_map(compile_bpf: CompileBpf) -> None:
    """``__uint(key_size, N)`` names no type; a ring buffer's or perf event array's ``__type``
    documents records (the map is created with other sizes): no IDs. A map-in-map's inner
    definition keeps its own."""
    src = """
    struct event { __u64 a; };
    struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(key_size, 4); __uint(value_size, 8);
             __uint(max_entries, 1); } sized SEC(".maps");
    struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096);
             __type(value, struct event); } ring SEC(".maps");
    struct { __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY); __type(key, __u32); __type(value, __u32);
             } perf SEC(".maps");
    struct inner { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32);
                   __type(value, struct event); };
    struct { __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); __uint(max_entries, 1); __type(key, __u32);
             __array(values, struct inner); } outer SEC(".maps");
    """
    maps = read_collection(compile_bpf(src + lookups("sized", "ring", "perf", "outer"))).maps
    for name in ("sized", "ring"):
        assert (maps[name].btf_key_type_id, maps[name].btf_value_type_id) == (0, 0), name
    perf = maps["perf"]
    assert (perf.btf_key_type_id, perf.btf_value_type_id) == (0, 0)
    outer = maps["outer"]
    assert outer.btf_key_type_id != 0 and outer.btf_value_type_id == 0  # values are map ids
    assert not takes_btf(outer)  # libbpf creates a map-in-map without BTF
    assert outer.inner is not None and outer.inner.btf is not None
    assert named(Btf(outer.inner.btf), outer.inner.btf_value_type_id) == "STRUCT event"


def test_fields_only_btf_describes(compile_bpf: CompileBpf) -> None:
    """The kernel's btf_parse_fields: by struct name, in nested structs and arrays; tagged pointers."""
    src = """
    struct task;
    struct inner { __u32 x; struct bpf_spin_lock lock; };
    struct value {
        __u64 plain;
        struct inner nested[2];
        struct task __attribute__((btf_type_tag("kptr"))) *task;
        struct bpf_timer timer;
    };
    struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32);
             __type(value, struct value); } fancy SEC(".maps");
    struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32);
             __type(value, struct inner *); } pointer SEC(".maps");
    """
    maps = read_collection(compile_bpf(src + lookups("fancy", "pointer"))).maps
    assert maps["fancy"].btf_fields == (
        "struct bpf_spin_lock at offset 12",
        "a kptr pointer at offset 24",
        "struct bpf_timer at offset 32",
    )
    assert maps["pointer"].btf_fields == ()  # a pointer without a tag is a plain value


def test_btf_is_not_part_of_equality_or_compatibility(bpf_objects: BpfObjects) -> None:
    """A map created without BTF (an older bpfshare, a resource) stands in for the declaration."""
    timers = read_collection(bpf_objects["callback_timer"]).maps["timers"]
    bare = dataclasses.replace(timers, btf=None, btf_key_type_id=0, btf_value_type_id=0, btf_fields=())
    assert bare == timers and hash(bare) == hash(timers)
    info = MapInfo(
        id=1,
        type=MapType.Array,
        key_size=4,
        value_size=timers.value_size,
        max_entries=1,
        flags=MapFlag(0),
        name="timers",
        btf_id=0,
    )
    assert map_differences(timers, info) == []


def test_local_storage_rule_needs_btf_only_without_it() -> None:
    spec = MapSpec("store", MapType.TaskStorage, 4, 8, 0, flags=MapFlag.NoPrealloc)
    assert any("BTF" in v for v in map_rule_violations(spec))
    with_btf = dataclasses.replace(spec, btf=b"btf", btf_key_type_id=1, btf_value_type_id=2)
    assert map_rule_violations(with_btf) == []


def test_unusable_btf_refuses_only_the_maps_that_need_it(
    bpf_objects: BpfObjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BTF the reader cannot make loadable: maps are created without it (libbpf goes on without
    the object's BTF), but a timer's map and the program using it are refused, saying why."""

    def unusable(self: LinkInputs) -> bytes:
        raise UnsupportedError("unsupported: BTF DATASEC '.x': no ELF section gives its size")

    monkeypatch.setattr(LinkInputs, "program_btf", property(unusable))
    spec = read_collection(bpf_objects["callback_timer"])
    assert spec.maps["fired"].btf is None and spec.maps["fired"].btf_value_type_id != 0
    assert spec.refused_maps["timers"].reason == (
        "map 'timers': its value holds struct bpf_timer at offset 8, which needs the object's BTF: "
        "unsupported: BTF DATASEC '.x': no ELF section gives its size"
    )
    # (the program is refused as well: its callback's func_info needs the same BTF)
    assert "no ELF section gives its size" in spec.refused_programs["arm_timer"].reason
