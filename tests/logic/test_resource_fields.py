"""BpfMap and BpfProgram fields as `bpfshare apply -f` and the agent read them, beyond
test_resources.py: every refusal names the resource and the field (``BpfMap NAME: spec.FIELD``, as
ResourceError promises), YAML's surprises (``yes`` is a boolean, ``interfaces: eth0`` a string) are
refused instead of misread, and what is accepted is kept as written. What is refused is what the API
server refuses (the CRD decides: api/schema.py; tests/controlplane/test_validation_parity.py)."""

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
    assert refusal(parse_map, obj).startswith("BpfMap: metadata.name: ")
    obj["kind"] = "BpfProgram"
    prog = {**copy.deepcopy(PROG), "metadata": obj["metadata"]}
    assert refusal(parse_program, prog).startswith("BpfProgram: metadata.name: ")


def test_the_longest_and_dotted_names_are_names() -> None:
    long = "a" * 253
    assert parse_program(with_meta(PROG, name=long)).name == long
    assert parse_program(with_meta(PROG, name="count.ingress.v2")).name == "count.ingress.v2"


def test_an_object_without_metadata_is_refused() -> None:
    obj = copy.deepcopy(MAP)
    del obj["metadata"]
    assert refusal(parse_map, obj).startswith("BpfMap: metadata.name: required")


# -- BpfMap ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (None, "required"),
        ("Hash", "must be an object, not 'Hash'"),
        (["type", "Hash"], "must be an object, not a list"),
    ],
)
def test_a_missing_or_malformed_spec_is_named(spec: Any, words: str) -> None:
    obj = copy.deepcopy(MAP)
    obj["spec"] = spec
    assert refusal(parse_map, obj) == f"BpfMap flow-counts: spec: {words}"
    prog = copy.deepcopy(PROG)
    prog["spec"] = spec
    assert refusal(parse_program, prog) == f"BpfProgram count-ingress: spec: {words}"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("keySize", None, "spec.keySize: required"),
        ("keySize", True, "spec.keySize: must be an integer, not True"),  # `keySize: yes` in YAML 1.1
        ("valueSize", 8.5, "spec.valueSize: must be an integer, not 8.5"),
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


def test_an_integral_float_is_the_integer_kubectl_sends() -> None:
    """kubectl sends YAML as JSON, and Go writes float64(8) as 8: the API server sees an integer."""
    assert parse_map(with_spec(MAP, valueSize=8.0)).value_size == 8


def test_map_types_in_cilium_spelling() -> None:
    assert parse_map(with_spec(MAP, type="Hash")).type is MapType.Hash
    ringbuf = with_spec(MAP, type="RingBuf", keySize=0, valueSize=0, maxEntries=4096, flags=[])
    assert parse_map(ringbuf).type is MapType.RingBuf


@pytest.mark.parametrize("spelling", ["hash", "BPF_MAP_TYPE_HASH", "percpu_hash", "BPF_MAP_TYPE_LRU_PERCPU_HASH"])
def test_the_kernels_spellings_are_refused_as_the_api_server_refuses_them(spelling: str) -> None:
    message = refusal(parse_map, with_spec(MAP, type=spelling))
    assert message.startswith(f"BpfMap flow-counts: spec.type: unsupported value {spelling!r} (one of: Hash, Array")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "unsupported value ''"),
        ("Hashmap", "unsupported value 'Hashmap'"),
        ("BPF_MAP_TYPE_", "unsupported value 'BPF_MAP_TYPE_'"),
        (None, "required"),
        (1, "must be a string, not 1"),
    ],
)
def test_unknown_map_types_are_named(value: Any, words: str) -> None:
    obj = with_spec(MAP, type=value) if value is not None else _without(MAP, "type")
    assert refusal(parse_map, obj).startswith(f"BpfMap flow-counts: spec.type: {words}")


def test_flags_combine() -> None:
    res = parse_map(with_spec(MAP, flags=["NoPrealloc", "RdonlyProg", "ZeroSeed"]))
    assert res.flags == MapFlag.NoPrealloc | MapFlag.RdonlyProg | MapFlag.ZeroSeed
    assert parse_map(with_spec(MAP, flags=[])).flags == MapFlag(0)
    assert parse_map(_without(MAP, "flags")).flags == MapFlag(0)


def test_the_kernels_flag_spelling_and_a_repeated_flag_are_refused() -> None:
    """flags is a set in the CRD (x-kubernetes-list-type: set): the API server refuses a repeat."""
    message = refusal(parse_map, with_spec(MAP, flags=["BPF_F_RDONLY_PROG"]))
    assert message.startswith("BpfMap flow-counts: spec.flags[0]: unsupported value 'BPF_F_RDONLY_PROG'")
    assert refusal(parse_map, with_spec(MAP, flags=["NoPrealloc", "ZeroSeed", "NoPrealloc"])) == (
        "BpfMap flow-counts: spec.flags[2]: duplicate value 'NoPrealloc'"
    )


def test_an_unknown_flag_is_quoted() -> None:
    assert refusal(parse_map, with_spec(MAP, flags=["NoPrealloc", "Turbo"])).startswith(
        "BpfMap flow-counts: spec.flags[1]: unsupported value 'Turbo' (one of: NoPrealloc, NoCommonLru"
    )


@pytest.mark.parametrize("pin_name", ["flow_counts", "Flow-Counts-2", "_x", "p" * 128])
def test_explicit_pin_names_are_kept(pin_name: str) -> None:
    assert parse_map(with_spec(MAP, pinName=pin_name)).pin_name == pin_name


@pytest.mark.parametrize("pin_name", ["-x", "a.b", ".", "a b", "a\0b", "ä", 7])
def test_pin_names_that_are_not_one_bpffs_component_are_refused(pin_name: Any) -> None:
    message = refusal(parse_map, with_spec(MAP, pinName=pin_name))
    if isinstance(pin_name, str):
        assert message == f"BpfMap flow-counts: spec.pinName: {pin_name!r} does not match ^[A-Za-z0-9_][A-Za-z0-9_-]*$"
    else:
        assert message == f"BpfMap flow-counts: spec.pinName: must be a string, not {pin_name!r}"


def test_a_dotted_resource_name_needs_a_pin_name() -> None:
    """bpffs refuses '.' in names and the pin name defaults to metadata.name: the error names the field
    the user did set and says what to do, not that spec.pinName (which they never set) is invalid."""
    obj = with_meta(MAP, name="flow.counts")
    assert refusal(parse_map, obj) == (
        "BpfMap flow.counts: metadata.name: the pin name defaults to metadata.name, and bpffs refuses '.' in a "
        "pin name: set spec.pinName"
    )
    obj["spec"]["pinName"] = "flow_counts"
    assert parse_map(obj).pin_name == "flow_counts"


def test_a_resource_name_too_long_for_a_pin_name_needs_a_pin_name() -> None:
    obj = with_meta(MAP, name="a" * 129)
    assert refusal(parse_map, obj) == (
        f"BpfMap {'a' * 129}: metadata.name: the pin name defaults to metadata.name, which is longer than a pin "
        "name may be (128 characters): set spec.pinName"
    )
    assert parse_map(with_meta(MAP, name="a" * 128)).pin_name == "a" * 128


def test_adopt_path_is_kept_and_checked() -> None:
    assert parse_map(with_spec(MAP, adopt="/sys/fs/bpf/tc/globals/flow_counts")).adopt == (
        "/sys/fs/bpf/tc/globals/flow_counts"
    )
    assert parse_map(MAP).adopt is None
    assert refusal(parse_map, with_spec(MAP, adopt="/sys/fs/bpf/a\0b")).startswith(
        "BpfMap flow-counts: spec.adopt: '/sys/fs/bpf/a\\x00b' does not match"
    )
    assert refusal(parse_map, with_spec(MAP, adopt="/sys/fs/bpf/..")) == (
        "BpfMap flow-counts: spec.adopt: adopt must not contain '.' or '..' path components"
    )
    assert refusal(parse_map, with_spec(MAP, adopt=12)) == "BpfMap flow-counts: spec.adopt: must be a string, not 12"


def test_reclaim_policy_retain() -> None:
    assert parse_map(with_spec(MAP, reclaimPolicy="Retain")).reclaim_policy == "Retain"
    assert "spec.reclaimPolicy: unsupported value 'retain' (one of: Delete, Retain)" in refusal(
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
        (None, "spec.bytecode: required"),
        ("/opt/x.o", "spec.bytecode: must be an object, not '/opt/x.o'"),
        (
            {"path": "", "inline": ""},
            "spec.bytecode.path: too short: 0 characters, at least 2; spec.bytecode.inline: must not be empty; "
            "spec.bytecode: exactly one of path, configMap, inline must be set",
        ),
        (
            {"path": "/x.o", "configMap": {"namespace": "a", "name": "b", "key": "c"}},
            "spec.bytecode: exactly one of path, configMap, inline must be set",
        ),
        ({"path": "/x.o", "sha256": "ab" * 31}, "spec.bytecode.sha256: "),
        ({"path": "/x.o", "sha256": "AB" * 32}, "spec.bytecode.sha256: "),  # lowercase only
        ({"configMap": {"namespace": "a", "name": "b"}}, "spec.bytecode.configMap.key: required"),
    ],
)
def test_bytecode_errors(bytecode: Any, words: str) -> None:
    obj = with_spec(PROG, bytecode=bytecode) if bytecode is not None else _without(PROG, "bytecode")
    assert refusal(parse_program, obj).startswith(f"BpfProgram count-ingress: {words}")


@pytest.mark.parametrize(
    ("attach", "words"),
    [
        (None, "spec.attach: required"),
        ({}, "spec.attach: exactly one attach kind (tc, tcx, cgroup) must be set"),
        ({"xdp": {"interfaces": ["eth0"]}}, "spec.attach.xdp: unknown field"),
        (
            {"tc": {"interfaces": ["a"], "direction": "ingress"}, "tcx": {"interfaces": ["a"], "direction": "ingress"}},
            "spec.attach: exactly one attach kind (tc, tcx, cgroup) must be set",
        ),
        (
            {"tc": {"interfaces": "eth0", "direction": "ingress"}},
            "spec.attach.tc.interfaces: must be a list, not 'eth0'",
        ),
        ({"tcx": {"interfaces": ["eth0", ""], "direction": "ingress"}}, "spec.attach.tcx.interfaces[1]: must not be"),
        ({"tcx": {"direction": "egress"}}, "spec.attach.tcx.interfaces: required"),
        ({"tcx": {"interfaces": ["eth0"], "direction": "Ingress"}}, "spec.attach.tcx.direction: unsupported value"),
        (
            {"tc": {"interfaces": ["eth0"], "direction": "ingress", "priority": "high"}},
            "spec.attach.tc.priority: must be an integer, not 'high'",
        ),
        ({"cgroup": {"path": "/", "type": None}}, "spec.attach.cgroup.type: required"),
        ({"cgroup": {"path": "/a/..", "type": "egress"}}, "spec.attach.cgroup.path: path must stay inside"),
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


def test_no_network_namespace_means_the_agents_own_and_an_empty_one_is_refused() -> None:
    tc: dict[str, Any] = {"tc": {"interfaces": ["eth0"], "direction": "ingress"}}
    assert parse_program(with_spec(PROG, attach=tc)).targets[0].netns is None
    tc["tc"]["networkNamespace"] = ""  # minLength 1 in the CRD: the API server refuses it too
    assert refusal(parse_program, with_spec(PROG, attach=tc)) == (
        "BpfProgram count-ingress: spec.attach.tc.networkNamespace: must not be empty"
    )


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"program": ""}, "spec.program: must not be empty"),
        ({"program": 7}, "spec.program: must be a string, not 7"),
        ({"maps": ["shared_counts"]}, "spec.maps: must be an object, not a list"),
        ({"maps": {"a": "ok", "b": "-bad"}}, "spec.maps.b: '-bad' does not match"),
    ],
)
def test_program_and_maps_errors(changes: dict[str, Any], words: str) -> None:
    assert refusal(parse_program, with_spec(PROG, **changes)).startswith(f"BpfProgram count-ingress: {words}")


def test_a_null_binding_is_dropped_as_the_api_server_drops_it() -> None:
    assert parse_program(with_spec(PROG, maps={"shared_counts": None, "b": "ok"})).maps == (("b", "ok"),)


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
