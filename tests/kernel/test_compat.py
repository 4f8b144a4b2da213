"""Compatibility of a live map with a spec: every difference at once, kernel quirks ignored."""

from __future__ import annotations

import dataclasses

import pytest

from bpfshare.errors import IncompatibleMapError
from bpfshare.kernel.compat import check_compatible, map_differences
from bpfshare.kernel.cpus import possible_cpus
from bpfshare.kernel.maps import Map, MapInfo
from bpfshare.spec import MapSpec, effective_spec, kernel_object_name
from bpfshare.types import MapFlag, MapType, ProgType


def info_like(spec: MapSpec, **changes: object) -> MapInfo:
    base = MapInfo(
        id=1,
        type=spec.type,
        key_size=spec.key_size,
        value_size=spec.value_size,
        max_entries=spec.max_entries,
        flags=spec.flags,
        name=kernel_object_name(spec.name),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


HASH = MapSpec(name="m", type=MapType.Hash, key_size=4, value_size=8, max_entries=1024)


def test_identical_is_compatible() -> None:
    assert map_differences(HASH, info_like(HASH)) == []
    check_compatible(HASH, info_like(HASH), "map m")


def test_every_difference_named_at_once() -> None:
    want = MapSpec(name="m", type=MapType.Array, key_size=8, value_size=8, max_entries=16, flags=MapFlag.NoPrealloc)
    with pytest.raises(IncompatibleMapError) as exc:
        check_compatible(want, info_like(HASH), "map 'm' pinned at /x")
    assert exc.value.differences == [
        "Type: Hash changed to Array",
        "KeySize: 4 changed to 8",
        "MaxEntries: 1024 changed to 16",
        "Flags: 0 changed to NoPrealloc",
    ]
    assert str(exc.value) == (
        "map 'm' pinned at /x: Type: Hash changed to Array, KeySize: 4 changed to 8, "
        "MaxEntries: 1024 changed to 16, Flags: 0 changed to NoPrealloc"
    )


def test_value_size_difference() -> None:
    assert map_differences(HASH, info_like(HASH, value_size=16)) == ["ValueSize: 16 changed to 8"]


def test_perf_event_array_zero_means_possible_cpus() -> None:
    spec = MapSpec(name="events", type=MapType.PerfEventArray, key_size=0, value_size=0, max_entries=0)
    live = info_like(spec, key_size=4, value_size=4, max_entries=possible_cpus())
    assert map_differences(spec, live) == []
    # A hard-coded large value is clamped like the kernel loaders do.
    assert map_differences(dataclasses.replace(spec, max_entries=4096), live) == []


def test_devmap_rdonly_prog_added_by_kernel_is_ignored() -> None:
    spec = MapSpec(name="tx", type=MapType.DevMap, key_size=4, value_size=4, max_entries=8)
    assert map_differences(spec, info_like(spec, flags=MapFlag.RdonlyProg)) == []
    # ...but not for other types.
    assert map_differences(HASH, info_like(HASH, flags=MapFlag.RdonlyProg)) == ["Flags: RdonlyProg changed to 0"]


def test_fd_only_flags_are_ignored() -> None:
    spec = dataclasses.replace(HASH, flags=MapFlag.Rdonly | MapFlag.NoPrealloc)
    assert map_differences(spec, info_like(HASH, flags=MapFlag.NoPrealloc)) == []


def test_ringbuf_key_value_always_zero() -> None:
    spec = MapSpec(name="rb", type=MapType.RingBuf, key_size=4, value_size=8, max_entries=4096)
    assert effective_spec(spec, possible_cpus()).key_size == 0
    assert map_differences(spec, info_like(spec, key_size=0, value_size=0)) == []


def test_prog_array_owner_type() -> None:
    spec = MapSpec(name="jmp", type=MapType.ProgArray, key_size=4, value_size=4, max_entries=4)
    owned = info_like(spec, owner_prog_type=ProgType.SchedCls)
    assert map_differences(spec, owned, prog_type=ProgType.SchedCls) == []
    diffs = map_differences(spec, owned, prog_type=ProgType.CgroupSkb)
    assert len(diffs) == 1 and diffs[0].startswith("OwnerProgType: SchedCls changed to CgroupSkb")
    assert map_differences(spec, info_like(spec), prog_type=ProgType.CgroupSkb) == []  # not owned yet


@pytest.mark.kernel
def test_kernel_reported_flags_match_specs() -> None:
    """What the real kernel reports for the special cases above."""
    devmap = MapSpec(name="tx", type=MapType.DevMap, key_size=4, value_size=4, max_entries=8)
    with Map.create(devmap) as m:
        assert m.info().flags & MapFlag.RdonlyProg  # added by the kernel
        check_compatible(devmap, m.info(), "devmap")
    rdonly = dataclasses.replace(HASH, flags=MapFlag.Rdonly)
    with Map.create(rdonly) as m:
        assert m.info().flags == MapFlag(0)  # an fd property, not kept
        check_compatible(rdonly, m.info(), "rdonly")
    perf = MapSpec(name="events", type=MapType.PerfEventArray, key_size=0, value_size=0, max_entries=0)
    with Map.create(perf) as m:
        assert m.info().max_entries == possible_cpus()
        check_compatible(perf, m.info(), "perf")
    ring = MapSpec(name="rb", type=MapType.RingBuf, key_size=0, value_size=0, max_entries=4096)
    with Map.create(ring) as m:
        check_compatible(ring, m.info(), "ringbuf")


@pytest.mark.kernel
def test_prog_array_owner_from_fdinfo() -> None:
    from bpfshare.kernel.programs import Program
    from tests.kernel.asm import LD_IMM64, insn, returns, simple_spec

    spec = MapSpec(name="jmp", type=MapType.ProgArray, key_size=4, value_size=4, max_entries=4)
    with Map.create(spec) as jmp:
        assert jmp.info().owner_prog_type is None
        # A program that references the array binds its owner type at load.
        code = insn(LD_IMM64, 1, 1, imm=jmp.fd) + insn(0) + returns(0)
        with Program.load(simple_spec(ProgType.SchedCls, code), code), Map.from_id(jmp.info().id) as again:
            assert again.info().owner_prog_type is ProgType.SchedCls
            assert map_differences(spec, again.info(), prog_type=ProgType.CgroupSkb)
