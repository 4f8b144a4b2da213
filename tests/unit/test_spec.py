"""Specs as pure data: the name the kernel keeps, and the "magic" fields it fills in at creation."""

from __future__ import annotations

import pytest

from bpfshare.spec import OBJECT_NAME_MAX, MapSpec, effective_spec, kernel_object_name
from bpfshare.types import MapType


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("my-map/with spaces and more", "my_map_with_spa"),
        (".rodata", ".rodata"),
        ("flow_counts", "flow_counts"),
        ("x" * 40, "x" * OBJECT_NAME_MAX),
        ("čaj", "_aj"),
        ("", ""),
    ],
)
def test_kernel_object_name(name: str, kept: str) -> None:
    assert kernel_object_name(name) == kept


def spec(map_type: MapType, key: int, value: int, entries: int) -> MapSpec:
    return MapSpec(name="m", type=map_type, key_size=key, value_size=value, max_entries=entries)


@pytest.mark.parametrize(
    ("declared", "created"),
    [
        (spec(MapType.PerfEventArray, 0, 0, 0), spec(MapType.PerfEventArray, 4, 4, 4)),
        (spec(MapType.PerfEventArray, 4, 4, 64), spec(MapType.PerfEventArray, 4, 4, 4)),
        (spec(MapType.PerfEventArray, 4, 4, 2), spec(MapType.PerfEventArray, 4, 4, 2)),
        (spec(MapType.CpuMap, 4, 4, 0), spec(MapType.CpuMap, 4, 4, 4)),
        (spec(MapType.ArrayOfMaps, 4, 0, 8), spec(MapType.ArrayOfMaps, 4, 4, 8)),
        (spec(MapType.HashOfMaps, 4, 0, 8), spec(MapType.HashOfMaps, 4, 4, 8)),
        (spec(MapType.RingBuf, 4, 8, 4096), spec(MapType.RingBuf, 0, 0, 4096)),
        (spec(MapType.UserRingBuf, 4, 8, 4096), spec(MapType.UserRingBuf, 0, 0, 4096)),
    ],
)
def test_effective_spec_fills_magic_fields(declared: MapSpec, created: MapSpec) -> None:
    assert effective_spec(declared, possible_cpus=4) == created


def test_effective_spec_leaves_ordinary_maps_alone() -> None:
    declared = spec(MapType.Hash, 0, 0, 0)
    assert effective_spec(declared, possible_cpus=4) is declared
