"""BpfMap and BpfProgram fields as `bpfshare apply -f` and the agent read them, beyond
test_resources.py: every refusal names the resource and the field (``BpfMap NAME: spec.FIELD``, as
ResourceError promises), YAML's surprises (``yes`` is a boolean, ``interfaces: eth0`` a string) are
refused instead of misread, and what is accepted is kept as written."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bpfshare.api.resources import Bytecode, ResourceError, attach_summary, parse_map, parse_program
from bpfshare.api.targets import CgroupTarget, TcTarget, TcxTarget
from bpfshare.types import MapFlag, MapType
from tests.logic.test_resources import MAP, PROG, with_spec


def refusal(parse: Any, obj: dict[str, Any]) -> str:
    with pytest.raises(ResourceError) as info:
        parse(obj)
    return str(info.value)


def with_meta(base: dict[str, Any], **meta: Any) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    obj["metadata"] = {**obj["metadata"], **meta}
    return obj


# -- metadata ----------------------------------------------------------------------------------------


def test_metadata_is_kept() -> None:
    obj = with_meta(
        MAP,
        generation=7,
        uid="0b5c",
        deletionTimestamp="2026-01-01T00:00:00Z",
        finalizers=["bpfshare.io/controller", "bpfshare.io/node-n1"],
    )
    meta = parse_map(obj).meta
    assert (meta.name, meta.generation, meta.uid) == ("flow-counts", 7, "0b5c")
    assert meta.deleting is True
    assert meta.finalizers == ("bpfshare.io/controller", "bpfshare.io/node-n1")
    fresh = parse_program(PROG).meta
    assert (fresh.generation, fresh.deleting, fresh.finalizers) == (0, False, ())


@pytest.mark.parametrize(
    "name",
    [None, "", "Flow", "flow_counts", "-flow", "flow-", "a" * 254, 42],
    ids=["missing", "empty", "upper", "underscore", "leading-dash", "trailing-dash", "254-chars", "number"],
)
def test_names_that_are_not_resource_names_are_refused(name: Any) -> None:
    obj = copy.deepcopy(MAP)
    if name is None:
        del obj["metadata"]["name"]
    else:
        obj["metadata"]["name"] = name
    assert refusal(parse_map, obj).startswith(f"BpfMap: metadata.name {name!r} is not a valid resource name")
    obj["kind"] = "BpfProgram"
    prog = {**copy.deepcopy(PROG), "metadata": obj["metadata"]}
    assert refusal(parse_program, prog).startswith("BpfProgram: metadata.name")


def test_the_longest_and_dotted_names_are_names() -> None:
    long = "a" * 253
    assert parse_program(with_meta(PROG, name=long)).name == long
    assert parse_program(with_meta(PROG, name="count.ingress.v2")).name == "count.ingress.v2"


def test_an_object_without_metadata_is_refused() -> None:
    obj = copy.deepcopy(MAP)
    del obj["metadata"]
    assert "metadata.name None" in refusal(parse_map, obj)


# -- BpfMap ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [None, "Hash", ["type", "Hash"]])
def test_a_missing_or_malformed_spec_is_named(spec: Any) -> None:
    obj = copy.deepcopy(MAP)
    obj["spec"] = spec
    assert refusal(parse_map, obj) == "BpfMap flow-counts: spec: missing"
    prog = copy.deepcopy(PROG)
    prog["spec"] = spec
    assert refusal(parse_program, prog) == "BpfProgram count-ingress: spec: missing"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("keySize", None, "spec.keySize: must be an integer, not None"),
        ("keySize", True, "spec.keySize: must be an integer, not True"),  # `keySize: yes` in YAML 1.1
        ("valueSize", 8.0, "spec.valueSize: must be an integer, not 8.0"),
        ("valueSize", "8", "spec.valueSize: must be an integer, not '8'"),
        ("maxEntries", -5, "spec.maxEntries: -5 is out of range"),
        ("maxEntries", 1 << 32, f"spec.maxEntries: {1 << 32} is out of range"),  # not a u32
        ("keySize", -1, "spec.keySize: -1 is out of range"),
    ],
)
def test_sizes_must_be_integers_in_range(field: str, value: Any, words: str) -> None:
    message = refusal(parse_map, with_spec(MAP, **{field: value}) if value is not None else _without(MAP, field))
    assert message.startswith(f"BpfMap flow-counts: {words}")


def _without(base: dict[str, Any], field: str) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    del obj["spec"][field]
    return obj


def test_the_largest_u32_max_entries_is_accepted() -> None:
    assert parse_map(with_spec(MAP, maxEntries=(1 << 32) - 1)).max_entries == (1 << 32) - 1


@pytest.mark.parametrize(
    ("spelling", "map_type"),
    [
        ("Hash", MapType.Hash),
        ("hash", MapType.Hash),
        ("BPF_MAP_TYPE_HASH", MapType.Hash),
        ("percpu_hash", MapType.PercpuHash),
        ("BPF_MAP_TYPE_LRU_PERCPU_HASH", MapType.LruPercpuHash),
        ("RingBuf", MapType.RingBuf),
    ],
)
def test_map_types_in_the_kernels_and_cilium_spellings(spelling: str, map_type: MapType) -> None:
    assert parse_map(with_spec(MAP, type=spelling)).type is map_type


@pytest.mark.parametrize("value", ["", "Hashmap", "BPF_MAP_TYPE_", None, 1])
def test_unknown_map_types_are_named(value: Any) -> None:
    obj = with_spec(MAP, type=value) if value is not None else _without(MAP, "type")
    assert refusal(parse_map, obj).startswith("BpfMap flow-counts: spec.type: unknown map type")


def test_flags_in_both_spellings_combine() -> None:
    res = parse_map(with_spec(MAP, flags=["NoPrealloc", "BPF_F_RDONLY_PROG", "ZeroSeed", "NoPrealloc"]))
    assert res.flags == MapFlag.NoPrealloc | MapFlag.RdonlyProg | MapFlag.ZeroSeed
    assert parse_map(with_spec(MAP, flags=[])).flags == MapFlag(0)
    assert parse_map(_without(MAP, "flags")).flags == MapFlag(0)


def test_an_unknown_flag_is_quoted() -> None:
    assert refusal(parse_map, with_spec(MAP, flags=["NoPrealloc", "Turbo"])) == (
        "BpfMap flow-counts: spec.flags: unknown map flag 'Turbo'"
    )


@pytest.mark.parametrize("pin_name", ["flow_counts", "Flow-Counts-2", "_x", "p" * 128])
def test_explicit_pin_names_are_kept(pin_name: str) -> None:
    assert parse_map(with_spec(MAP, pinName=pin_name)).pin_name == pin_name


@pytest.mark.parametrize("pin_name", ["-x", "a.b", ".", "a b", "a\0b", "ä", 7])
def test_pin_names_that_are_not_one_bpffs_component_are_refused(pin_name: Any) -> None:
    message = refusal(parse_map, with_spec(MAP, pinName=pin_name))
    assert message.startswith(f"BpfMap flow-counts: spec.pinName: {pin_name!r} must be a single path component")


def test_a_dotted_resource_name_needs_a_pin_name() -> None:
    """bpffs refuses '.' in names; the pin name defaults to metadata.name (the CRD has the same rule)."""
    obj = with_meta(MAP, name="flow.counts")
    assert "BpfMap flow.counts: spec.pinName: 'flow.counts'" in refusal(parse_map, obj)
    obj["spec"]["pinName"] = "flow_counts"
    assert parse_map(obj).pin_name == "flow_counts"


def test_adopt_path_is_kept_and_checked() -> None:
    assert parse_map(with_spec(MAP, adopt="/sys/fs/bpf/tc/globals/flow_counts")).adopt == (
        "/sys/fs/bpf/tc/globals/flow_counts"
    )
    assert parse_map(MAP).adopt is None
    for bad in ("/sys/fs/bpf/a\0b", "/sys/fs/bpf/..", 12):
        assert refusal(parse_map, with_spec(MAP, adopt=bad)).startswith(f"BpfMap flow-counts: spec.adopt: {bad!r}")


def test_reclaim_policy_retain() -> None:
    assert parse_map(with_spec(MAP, reclaimPolicy="Retain")).reclaim_policy == "Retain"
    assert "spec.reclaimPolicy: must be Delete or Retain, not 'retain'" in refusal(
        parse_map, with_spec(MAP, reclaimPolicy="retain")
    )


# -- BpfProgram --------------------------------------------------------------------------------------


def test_bytecode_sources_and_how_they_are_described() -> None:
    """The description is what status messages and events say about where an object came from."""
    digest = "ab" * 32
    path = parse_program(with_spec(PROG, bytecode={"path": "/opt/x.o", "sha256": digest})).bytecode
    assert path == Bytecode(path="/opt/x.o", sha256=digest)
    assert path.describe() == "path /opt/x.o"
    cm = parse_program(with_spec(PROG, bytecode={"configMap": {"namespace": "ns", "name": "objs", "key": "x.o"}}))
    assert cm.bytecode.config_map == ("ns", "objs", "x.o")
    assert cm.bytecode.describe() == "configMap ns/objs key x.o"
    inline = parse_program(with_spec(PROG, bytecode={"inline": "f0VMRg=="})).bytecode
    assert (inline.inline, inline.sha256, inline.describe()) == ("f0VMRg==", "", "inline bytecode")


@pytest.mark.parametrize(
    ("bytecode", "words"),
    [
        (None, "spec.bytecode: missing"),
        ("/opt/x.o", "spec.bytecode: missing"),
        ({"path": "", "inline": ""}, "spec.bytecode: exactly one of path, configMap, inline is required (got none)"),
        (
            {"path": "/x.o", "configMap": {"namespace": "a", "name": "b", "key": "c"}},
            "spec.bytecode: exactly one of path, configMap, inline is required (got ['path', 'configMap'])",
        ),
        ({"path": "/x.o", "sha256": "ab" * 31}, "spec.bytecode.sha256: "),
        ({"path": "/x.o", "sha256": "AB" * 32}, "spec.bytecode.sha256: "),  # lowercase only
        ({"configMap": {"namespace": "a", "name": "b"}}, "spec.bytecode.configMap: namespace, name and key"),
    ],
)
def test_bytecode_errors(bytecode: Any, words: str) -> None:
    obj = with_spec(PROG, bytecode=bytecode) if bytecode is not None else _without(PROG, "bytecode")
    assert refusal(parse_program, obj).startswith(f"BpfProgram count-ingress: {words}")


@pytest.mark.parametrize(
    ("attach", "words"),
    [
        (None, "spec.attach: missing"),
        ({}, "spec.attach: exactly one of tc, tcx, cgroup is required (got none)"),
        ({"xdp": {"interfaces": ["eth0"]}}, "spec.attach: exactly one of tc, tcx, cgroup is required (got none)"),
        (
            {"tc": {"interfaces": ["a"], "direction": "ingress"}, "tcx": {"interfaces": ["a"], "direction": "ingress"}},
            "spec.attach: exactly one of tc, tcx, cgroup is required (got ['tc', 'tcx'])",
        ),
        ({"tc": {"interfaces": "eth0", "direction": "ingress"}}, "spec.attach.tc.interfaces: a non-empty list"),
        ({"tcx": {"interfaces": ["eth0", ""], "direction": "ingress"}}, "spec.attach.tcx.interfaces: a non-empty"),
        ({"tcx": {"direction": "egress"}}, "spec.attach.tcx.interfaces: a non-empty list"),
        ({"tcx": {"interfaces": ["eth0"], "direction": "Ingress"}}, "spec.attach.tcx.direction: must be ingress or"),
        (
            {"tc": {"interfaces": ["eth0"], "direction": "ingress", "priority": "high"}},
            "spec.attach.tc.priority: must be an integer, not 'high'",
        ),
        ({"cgroup": {"path": "/", "type": None}}, "spec.attach.cgroup.type: unknown cgroup attach type None"),
        ({"cgroup": {"path": "/a/..", "type": "egress"}}, "spec.attach.cgroup.path: '/a/..' must stay inside"),
        ({"cgroup": {"path": "/a\0", "type": "egress"}}, "spec.attach.cgroup.path: "),
    ],
)
def test_attach_errors(attach: Any, words: str) -> None:
    obj = with_spec(PROG, attach=attach) if attach is not None else _without(PROG, "attach")
    assert refusal(parse_program, obj).startswith(f"BpfProgram count-ingress: {words}")


def test_tc_and_tcx_targets_carry_the_namespace_to_every_interface() -> None:
    tc = {"tc": {"interfaces": ["eth0", "eth1"], "direction": "egress", "networkNamespace": "/proc/1/ns/net"}}
    assert parse_program(with_spec(PROG, attach=tc)).targets == (
        TcTarget("eth0", "egress", "/proc/1/ns/net", 1),
        TcTarget("eth1", "egress", "/proc/1/ns/net", 1),
    )
    tcx = parse_program(with_spec(PROG, attach={"tcx": {"interfaces": ["v0"], "direction": "ingress"}}))
    assert tcx.targets == (TcxTarget("v0", "ingress", None),)
    assert tcx.attach_kind == "tcx"
    cgroup = parse_program(with_spec(PROG, attach={"cgroup": {"path": "kubepods/burstable", "type": "egress"}}))
    assert cgroup.targets == (CgroupTarget("kubepods/burstable", "egress"),) and cgroup.attach_kind == "cgroup"


def test_an_empty_network_namespace_means_the_agents_own() -> None:
    tc = {"tc": {"interfaces": ["eth0"], "direction": "ingress", "networkNamespace": ""}}
    assert parse_program(with_spec(PROG, attach=tc)).targets[0].netns is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"program": ""}, "spec.program: the function or section name is required"),
        ({"program": 7}, "spec.program: the function or section name is required"),
        ({"maps": ["shared_counts"]}, "spec.maps: must map object map names to BpfMap names"),
        ({"maps": {"shared_counts": None}}, "spec.maps.shared_counts: None is not a BpfMap name"),
        ({"maps": {"a": "ok", "b": "-bad"}}, "spec.maps.b: '-bad' is not a BpfMap name"),
    ],
)
def test_program_and_maps_errors(changes: dict[str, Any], words: str) -> None:
    assert refusal(parse_program, with_spec(PROG, **changes)).startswith(f"BpfProgram count-ingress: {words}")


def test_map_bindings_are_kept_in_a_stable_order() -> None:
    a = parse_program(with_spec(PROG, maps={"z_map": "zeta", "a_map": "alpha"}))
    b = parse_program(with_spec(PROG, maps={"a_map": "alpha", "z_map": "zeta"}))
    assert a.maps == b.maps == (("a_map", "alpha"), ("z_map", "zeta"))
    assert a == b  # the same resource, however the YAML orders it
    assert parse_program(_without(PROG, "maps")).maps == ()


@pytest.mark.parametrize(
    ("attach", "summary"),
    [
        ({"tc": {"interfaces": ["eth0"], "direction": "egress", "networkNamespace": "blue"}}, "tc/egress eth0@blue"),
        ({"tcx": {"interfaces": ["a", "b", "c"], "direction": "ingress"}}, "tcx/ingress a,b,c"),
        ({"cgroup": {"type": "sock_create"}}, "cgroup/sock_create /"),
        ({}, ""),
    ],
)
def test_attach_summary_is_what_kubectl_get_shows(attach: dict[str, Any], summary: str) -> None:
    assert attach_summary(with_spec(PROG, attach=attach)) == summary
    assert attach_summary({"spec": None}) == "" and attach_summary({}) == ""
