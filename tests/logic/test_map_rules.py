"""The kernel's per-type map rules, checked before a map is created (``spec.map_rule_violations``).

Pure: no kernel. tests/kernel/test_map_rules.py holds the rules against the real kernel.
"""

from __future__ import annotations

import pytest

from bpfshare.spec import MapSpec, map_rule_violations
from bpfshare.types import MapFlag, MapType

F = MapFlag
NO_FLAGS = MapFlag(0)


def spec(map_type: MapType, key: int, value: int, entries: int, flags: MapFlag = NO_FLAGS) -> MapSpec:
    return MapSpec(name="m", type=map_type, key_size=key, value_size=value, max_entries=entries, flags=flags)


@pytest.mark.parametrize(
    "good",
    [
        spec(MapType.Hash, 4, 8, 1024),
        spec(MapType.Hash, 16, 8, 1024, F.NoPrealloc),
        spec(MapType.Array, 4, 8, 1, F.Mmapable | F.RdonlyProg),  # a .rodata global data map
        spec(MapType.PercpuArray, 4, 32768, 4),
        spec(MapType.ProgArray, 4, 4, 8),
        spec(MapType.PerfEventArray, 0, 0, 0),  # every field filled in by the loader
        spec(MapType.PerfEventArray, 4, 4, 2, F.PreserveElems),
        spec(MapType.ArrayOfMaps, 4, 0, 2),  # value size 0 means "a map": 4
        spec(MapType.HashOfMaps, 8, 4, 2),
        spec(MapType.CgroupArray, 4, 4, 1),
        spec(MapType.DevMap, 4, 4, 1),
        spec(MapType.DevMap, 4, 8, 1),
        spec(MapType.DevMapHash, 4, 8, 1),
        spec(MapType.CpuMap, 4, 4, 0),  # max entries filled in: the possible CPUs
        spec(MapType.CpuMap, 4, 8, 2),
        spec(MapType.XskMap, 4, 4, 1),
        spec(MapType.SockMap, 4, 8, 1),
        spec(MapType.SockHash, 12, 4, 1),
        spec(MapType.RingBuf, 0, 0, 4096),
        spec(MapType.UserRingBuf, 0, 0, 1 << 24),
        spec(MapType.LpmTrie, 8, 1, 16, F.NoPrealloc),
        spec(MapType.LpmTrie, 5, 1, 16, F.NoPrealloc),
        spec(MapType.LpmTrie, 260, 1, 16, F.NoPrealloc),
        spec(MapType.Queue, 0, 8, 16),
        spec(MapType.Stack, 0, 8, 16),
        spec(MapType.BloomFilter, 0, 8, 16),
        spec(MapType.StackTrace, 4, 127 * 8, 16),
        spec(MapType.CgroupStorage, 16, 8, 0),
        spec(MapType.LruHash, 4, 8, 16, F.NoCommonLru),
        spec(MapType.Hash, 4, 8, 16, F.Rdonly),
    ],
)
def test_specs_the_kernel_accepts_break_no_rule(good: MapSpec) -> None:
    assert map_rule_violations(good, page_size=4096) == []


@pytest.mark.parametrize(
    ("bad", "violations"),
    [
        (spec(MapType.Array, 8, 8, 4), ["Array needs keySize 4 (an array index is a u32), not 8"]),
        (spec(MapType.PercpuArray, 8, 8, 4), ["PercpuArray needs keySize 4 (an array index is a u32), not 8"]),
        (spec(MapType.ProgArray, 4, 8, 4), ["ProgArray needs valueSize 4 (its values are file descriptors), not 8"]),
        (
            spec(MapType.ArrayOfMaps, 8, 8, 4),
            [
                "ArrayOfMaps needs keySize 4 (an array index is a u32), not 8",
                "ArrayOfMaps needs valueSize 4 (its values are file descriptors), not 8",
            ],
        ),
        (spec(MapType.HashOfMaps, 4, 8, 4), ["HashOfMaps needs valueSize 4 (its values are file descriptors), not 8"]),
        (
            spec(MapType.PerfEventArray, 8, 8, 4),
            [
                "PerfEventArray needs keySize 4 (an array index is a u32), not 8",
                "PerfEventArray needs valueSize 4 (its values are file descriptors), not 8",
            ],
        ),
        (
            spec(MapType.CgroupArray, 4, 8, 4),
            ["CgroupArray needs valueSize 4 (its values are file descriptors), not 8"],
        ),
        (
            spec(MapType.DevMap, 8, 12, 4),
            [
                "DevMap needs keySize 4, not 8",
                "DevMap needs valueSize 4 or 8 (an ifindex, or an ifindex and a program fd), not 12",
            ],
        ),
        (
            spec(MapType.CpuMap, 8, 16, 4),
            [
                "CpuMap needs keySize 4 (a CPU number), not 8",
                "CpuMap needs valueSize 4 or 8 (a queue size, or a queue size and a program fd), not 16",
            ],
        ),
        (
            spec(MapType.XskMap, 8, 8, 4),
            [
                "XskMap needs keySize 4, not 8",
                "XskMap needs valueSize 4 (an AF_XDP socket fd), not 8",
            ],
        ),
        (
            spec(MapType.SockMap, 8, 16, 4),
            [
                "SockMap needs keySize 4, not 8",
                "SockMap needs valueSize 4 or 8 (a socket fd or cookie), not 16",
            ],
        ),
        (
            spec(MapType.RingBuf, 4, 8, 1000),
            [
                "RingBuf needs keySize 0 (it has no keys), not 4",
                "RingBuf needs valueSize 0 (it has no fixed-size values), not 8",
                "RingBuf needs maxEntries (its size in bytes) a power of 2 and a multiple of the page size (4096), "
                "not 1000",
            ],
        ),
        (
            spec(MapType.RingBuf, 0, 0, 12288),
            [
                "RingBuf needs maxEntries (its size in bytes) a power of 2 and a multiple of the page size (4096), "
                "not 12288",
            ],
        ),
        (
            spec(MapType.UserRingBuf, 0, 0, 2048),
            [
                "UserRingBuf needs maxEntries (its size in bytes) a power of 2 and a multiple of the page size (4096), "
                "not 2048",
            ],
        ),
        (
            spec(MapType.LpmTrie, 8, 8, 16),
            ["LpmTrie needs the NoPrealloc flag (a trie allocates its nodes as they are inserted)"],
        ),
        (
            spec(MapType.LpmTrie, 4, 0, 16, F.NoPrealloc),
            [
                "LpmTrie needs keySize 5 to 260 (a 4-byte prefix length, then 1 to 256 bytes of data), not 4",
                "LpmTrie needs valueSize at least 1, not 0",
            ],
        ),
        (
            spec(MapType.LpmTrie, 261, 8, 16, F.NoPrealloc),
            [
                "LpmTrie needs keySize 5 to 260 (a 4-byte prefix length, then 1 to 256 bytes of data), not 261",
            ],
        ),
        (spec(MapType.Queue, 4, 8, 16), ["Queue needs keySize 0 (it has no keys), not 4"]),
        (
            spec(MapType.Stack, 4, 8, 0),
            [
                "Stack needs keySize 0 (it has no keys), not 4",
                "Stack needs maxEntries at least 1, not 0",
            ],
        ),
        (spec(MapType.BloomFilter, 4, 8, 16), ["BloomFilter needs keySize 0 (it has no keys), not 4"]),
        (spec(MapType.Hash, 4, 8, 0), ["Hash needs maxEntries at least 1, not 0"]),
        (
            spec(MapType.Array, 4, 8, 4, F.NoPrealloc),
            ["Array does not accept the flag NoPrealloc (an array is always preallocated)"],
        ),
        (
            spec(MapType.PercpuArray, 4, 8, 4, F.NoPrealloc),
            ["PercpuArray does not accept the flag NoPrealloc (an array is always preallocated)"],
        ),
        (
            spec(MapType.ProgArray, 4, 4, 4, F.NoPrealloc),
            ["ProgArray does not accept the flag NoPrealloc (an array is always preallocated)"],
        ),
        (spec(MapType.LruHash, 4, 8, 4, F.NoPrealloc), ["LruHash does not accept the flag NoPrealloc"]),
        (
            spec(MapType.Hash, 4, 8, 4, F.NoCommonLru | F.Mmapable),
            ["Hash does not accept the flags NoCommonLru, Mmapable"],
        ),
        (spec(MapType.Hash, 4, 8, 4, F.Rdonly | F.Wronly), ["Hash cannot take both Rdonly and Wronly"]),
        (
            spec(MapType.PercpuHash, 4, 40000, 4),
            ["PercpuHash needs valueSize at most 32768 (one per-CPU allocation unit), not 40000"],
        ),
        (spec(MapType.StackTrace, 4, 12, 4), ["StackTrace needs valueSize a multiple of 8 (at least 8), not 12"]),
        (
            spec(MapType.CgroupStorage, 4, 8, 16),
            [
                "CgroupStorage needs keySize 8 or 16 (a cgroup id, or a struct bpf_cgroup_storage_key), not 4",
                "CgroupStorage needs maxEntries 0 (one value per cgroup, created on attach), not 16",
            ],
        ),
        (spec(MapType.Unspec, 4, 8, 4), ["Unspec is not a map type (give one, e.g. Hash or Array)"]),
    ],
)
def test_every_broken_rule_is_named(bad: MapSpec, violations: list[str]) -> None:
    assert map_rule_violations(bad, page_size=4096) == violations


def test_all_at_once() -> None:
    """One round trip fixes a definition: every rule it breaks is named together."""
    found = map_rule_violations(spec(MapType.Array, 8, 0, 0, F.NoPrealloc), page_size=4096)
    assert found == [
        "Array needs keySize 4 (an array index is a u32), not 8",
        "Array needs valueSize at least 1, not 0",
        "Array needs maxEntries at least 1, not 0",
        "Array does not accept the flag NoPrealloc (an array is always preallocated)",
    ]


def test_page_size_and_stack_depth_are_the_nodes() -> None:
    assert map_rule_violations(spec(MapType.RingBuf, 0, 0, 16384), page_size=16384) == []
    assert map_rule_violations(spec(MapType.RingBuf, 0, 0, 8192), page_size=16384) != []
    deep = spec(MapType.StackTrace, 4, 256 * 8, 1)
    assert map_rule_violations(deep, perf_max_stack=256) == []
    assert map_rule_violations(deep) == [
        "StackTrace needs valueSize at most 1016 (127 frames of 8 bytes, the sysctl kernel.perf_event_max_stack), "
        "not 2048"
    ]
