"""The per-type map rules against the real kernel: a sweep of shapes and flags, each created with the
rules switched off, must be refused by the kernel exactly when ``map_rule_violations`` names a rule;
and ``Map.create`` (so the loader's object maps too) refuses a broken spec before the kernel is asked."""

from __future__ import annotations

import errno
import itertools
from pathlib import Path

import pytest

from bpfshare.errors import KernelError, MapRuleError
from bpfshare.kernel import maps as maps_module
from bpfshare.kernel.cpus import possible_cpus
from bpfshare.kernel.maps import Map
from bpfshare.load.loader import load_program
from bpfshare.object import read_collection
from bpfshare.spec import MapSpec, effective_spec, map_rule_violations
from bpfshare.types import MAP_IN_MAP_TYPES, MapFlag, MapType
from tests.fixtures.objects import CompileBpf

pytestmark = pytest.mark.kernel

F = MapFlag
NO_FLAGS = MapFlag(0)
INNER = MapSpec("inner", MapType.Array, 4, 4, 1)
SIZES = (0, 1, 4, 5, 8, 16, 261)
ENTRIES = (0, 1, 4096, 12288)
FLAGS = (
    F.NoPrealloc,
    F.NoCommonLru,
    F.NumaNode,
    F.Rdonly,
    F.RdonlyProg,
    F.Mmapable,
    F.InnerMap,
    F.PreserveElems,
    F.ZeroSeed,
    F.StackBuildId,
    F.Clone,
    F.Rdonly | F.Wronly,
)
# Arena and StructOps need attributes bpfshare never passes (map_extra, a kernel BTF type).
SWEPT = [t for t in MapType if t not in (MapType.Arena, MapType.StructOps)]


def kernel_refuses(spec: MapSpec, monkeypatch: pytest.MonkeyPatch) -> int:
    """The errno the kernel answers for ``spec`` (0: created), with bpfshare's rules switched off."""
    with monkeypatch.context() as m:
        m.setattr(maps_module, "map_rule_violations", lambda *a, **k: [])
        try:
            Map.create(spec).close()
        except KernelError as exc:
            return exc.errno
    return 0


def shaped(t: MapType, key: int, value: int, entries: int, flags: MapFlag = NO_FLAGS) -> MapSpec:
    return MapSpec("probe", t, key, value, entries, flags, inner=INNER if t in MAP_IN_MAP_TYPES else None)


@pytest.mark.parametrize("map_type", SWEPT, ids=lambda t: t.name)
def test_rules_match_the_kernel(map_type: MapType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shape (sizes x entries, with and without NoPrealloc), then every flag on one good shape."""
    cpus = possible_cpus()
    wrong: list[str] = []
    accepted: list[MapSpec] = []

    def check(spec: MapSpec) -> None:
        sent = effective_spec(spec, cpus)
        rules = map_rule_violations(sent)
        err = kernel_refuses(spec, monkeypatch)
        if not err:
            accepted.append(spec)
        if bool(err) != bool(rules):
            said = errno.errorcode.get(err, "created") if err else "created"
            wrong.append(f"{sent}: kernel {said}, rules {rules}")

    for key, value, entries in itertools.product(SIZES, SIZES, ENTRIES):
        for flags in (F(0), F.NoPrealloc):
            check(shaped(map_type, key, value, entries, flags))
    if map_type is MapType.StackTrace:
        check(shaped(map_type, 4, 127 * 8, 1))
        check(shaped(map_type, 4, 128 * 8, 1))
    if map_type in (MapType.PercpuArray, MapType.PercpuHash, MapType.LruPercpuHash):
        check(shaped(map_type, 4, 32768, 1))
        check(shaped(map_type, 4, 32769, 1))
    good = [s for s in accepted if not s.flags]
    if good:
        for flags in FLAGS:
            base = good[0]
            check(shaped(map_type, base.key_size, base.value_size, base.max_entries, base.flags | flags))
    assert not wrong, "\n".join(wrong[:20])
    if map_type in (MapType.Unspec, MapType.SkStorage, MapType.InodeStorage, MapType.TaskStorage, MapType.CgrpStorage):
        assert not accepted  # each needs what bpfshare never passes (BTF), and the rules say so
    else:
        assert accepted, f"no shape of {map_type.name} was created: the sweep checked only refusals"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (MapSpec("ring", MapType.RingBuf, 0, 0, 1000), "RingBuf needs maxEntries (its size in bytes) a power of 2"),
        (MapSpec("trie", MapType.LpmTrie, 8, 8, 16), "LpmTrie needs the NoPrealloc flag"),
        (MapSpec("wide", MapType.Array, 8, 8, 16), "Array needs keySize 4 (an array index is a u32), not 8"),
        (MapSpec("jumps", MapType.ProgArray, 4, 8, 16), "ProgArray needs valueSize 4"),
    ],
)
def test_create_refuses_before_the_kernel(spec: MapSpec, words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_syscall(*args: object) -> int:
        raise AssertionError("the kernel was asked")

    monkeypatch.setattr(maps_module, "bpf", no_syscall)
    with pytest.raises(MapRuleError) as exc:
        Map.create(spec)
    assert str(exc.value).startswith(f"creating map {spec.name!r} (")
    assert words in str(exc.value)
    assert exc.value.errno == errno.EINVAL and exc.value.violations


def test_every_rule_named_at_once() -> None:
    with pytest.raises(MapRuleError) as exc:
        Map.create(MapSpec("x", MapType.Array, 8, 0, 0, F.NoPrealloc))
    assert exc.value.violations == [
        "Array needs keySize 4 (an array index is a u32), not 8",
        "Array needs valueSize at least 1, not 0",
        "Array needs maxEntries at least 1, not 0",
        "Array does not accept the flag NoPrealloc (an array is always preallocated)",
    ]


def test_a_kernel_refusal_the_rules_do_not_know_still_names_the_map() -> None:
    with pytest.raises(KernelError) as exc:
        Map.create(MapSpec("broken", MapType.Arena, 0, 0, 0))  # no rules for Arena: the kernel says
    assert not isinstance(exc.value, MapRuleError)
    assert "creating map 'broken' (Arena" in str(exc.value) and "EINVAL" in str(exc.value)


LPM_WITHOUT_NO_PREALLOC = """
struct key { __u32 prefixlen; __u32 addr; };
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __type(key, struct key);
    __type(value, __u32);
    __uint(max_entries, 16);
} routes SEC(".maps");

SEC("tc")
int lookup(struct __sk_buff *skb)
{
    struct key k = {32, 0};
    return bpf_map_lookup_elem(&routes, &k) ? 1 : 0;
}
char _license[] SEC("license") = "GPL";
"""


def test_the_loader_names_an_object_map_that_breaks_a_rule(compile_bpf: CompileBpf, bpffs: Path) -> None:
    collection = read_collection(compile_bpf(LPM_WITHOUT_NO_PREALLOC))
    with pytest.raises(MapRuleError) as exc:
        load_program(collection, "lookup", pin_root=bpffs)
    assert "creating map 'routes' (LpmTrie" in str(exc.value)
    assert "LpmTrie needs the NoPrealloc flag" in str(exc.value)
    assert not (bpffs / "loads" / "lookup" / "program").exists()
