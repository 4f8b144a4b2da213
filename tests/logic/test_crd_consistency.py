"""crds/*.yaml against the Python side, without an API server.

The SPEC promises that `bpfshare apply -f` validates as the API server does. The API server's side
is crds/ (tests/controlplane/test_crds.py proves on a real kube-apiserver which objects it accepts
and refuses); here the same objects go through api/resources.py, and the CRDs' names and enums are
compared with the constants and enumerations the agent and the loader use.

api/resources.py validates every object with the CRD itself (api/schema.py), so these tests hold
by construction; they fail if the two ever drift (a constant renamed, an enum the kernel types lack).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bpfshare.api import resources
from bpfshare.api.resources import ResourceError, parse_map, parse_program
from bpfshare.types import CGROUP_ATTACH_TYPES, CGROUP_PROG_TYPE, MapFlag, MapType
from tests.controlplane.objects import bpfmap, bpfprogram
from tests.controlplane.test_crds import INVALID_MAPS, INVALID_PROGRAMS, VALID_MAPS

REPO = Path(__file__).resolve().parents[2]
MAP_CRD = yaml.safe_load((REPO / "crds" / "bpfmap.yaml").read_text())
PROGRAM_CRD = yaml.safe_load((REPO / "crds" / "bpfprogram.yaml").read_text())


def spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


MAP_SPEC = spec_schema(MAP_CRD)
PROGRAM_SPEC = spec_schema(PROGRAM_CRD)


@pytest.mark.parametrize(
    ("crd", "kind", "plural"),
    [
        (MAP_CRD, resources.MAP_KIND, resources.MAP_PLURAL),
        (PROGRAM_CRD, resources.PROGRAM_KIND, resources.PROGRAM_PLURAL),
    ],
)
def test_the_agent_talks_to_the_resources_the_crds_define(crd: dict[str, Any], kind: str, plural: str) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{plural}.{resources.GROUP}"
    assert spec["group"] == resources.GROUP
    assert (spec["names"]["kind"], spec["names"]["plural"]) == (kind, plural)
    assert spec["scope"] == "Cluster"
    assert "bpf" in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == resources.VERSION and version["served"] and version["storage"]
    assert "status" in version["subresources"]  # the agent writes through /status


# The sizes the CRD's rules ask of each map type (the key a u32 for the arrays, none for the queues, ...).
NO_KEY = {"Queue", "Stack", "BloomFilter", "RingBuf"}
U32_KEY = {"Array", "PercpuArray", "ProgArray", "PerfEventArray", "ArrayOfMaps", "CgroupArray", "DevMap"}
U32_KEY |= {"DevMapHash", "CpuMap", "XskMap", "SockMap", "StackTrace"}
U32_VALUE = {"ProgArray", "PerfEventArray", "ArrayOfMaps", "CgroupArray", "XskMap"}


def map_of_type(name: str, **spec: Any) -> dict[str, Any]:
    """A BpfMap of the type (any name, for the types the CRD refuses) with sizes its rules accept."""
    key = 0 if name in NO_KEY else 4 if name in U32_KEY else 8
    value = 0 if name == "RingBuf" else 4 if name in U32_VALUE else 8
    return bpfmap("m", type=name, keySize=key, valueSize=value, maxEntries=4096, **spec)


def test_every_map_type_the_crd_allows_is_a_kernel_map_type_spelled_alike() -> None:
    for name in MAP_SPEC["type"]["enum"]:
        assert MapType.parse(name).name == name  # cilium/ebpf's spelling, as types.py documents
        assert parse_map(map_of_type(name)).type is MapType[name]


def test_every_map_flag_the_crd_allows_parses_and_prints_back() -> None:
    for name in MAP_SPEC["flags"]["items"]["enum"]:
        flag = MapFlag.parse_names([name])
        assert MapFlag.names(int(flag)) == [name]
    everything = MAP_SPEC["flags"]["items"]["enum"]
    assert sorted(MapFlag.names(int(parse_map(bpfmap("m", flags=everything)).flags))) == sorted(everything)


def test_apply_accepts_exactly_the_map_types_the_api_server_accepts() -> None:
    accepted = set()
    for member in MapType:
        try:
            parse_map(map_of_type(member.name))
            accepted.add(member.name)
        except ResourceError:
            pass
    assert accepted == set(MAP_SPEC["type"]["enum"])


def test_apply_accepts_exactly_the_map_flags_the_api_server_accepts() -> None:
    accepted = set()
    for member in MapFlag:
        try:
            parse_map(bpfmap("m", flags=[member.name]))
            accepted.add(member.name)
        except ResourceError:
            pass
    assert accepted == set(MAP_SPEC["flags"]["items"]["enum"])


def test_cgroup_attach_types_are_the_same_everywhere() -> None:
    """The CRD's enum, the names api/resources.py and the CLI's cgroup:DIR:TYPE accept, and the
    program-type table the fit check uses before asking the kernel."""
    crd = PROGRAM_SPEC["attach"]["properties"]["cgroup"]["properties"]["type"]["enum"]
    assert sorted(crd) == sorted(CGROUP_ATTACH_TYPES)
    assert len(set(CGROUP_ATTACH_TYPES.values())) == len(CGROUP_ATTACH_TYPES)  # no two names, one hook
    assert set(CGROUP_PROG_TYPE) == set(CGROUP_ATTACH_TYPES.values())
    for name in crd:
        target = parse_program(bpfprogram("p", attach={"cgroup": {"path": "/", "type": name}})).targets[0]
        assert target.attach_type is CGROUP_ATTACH_TYPES[name]


def test_directions_and_tc_priority_bounds_agree() -> None:
    attach = PROGRAM_SPEC["attach"]["properties"]
    for kind in ("tc", "tcx"):
        assert attach[kind]["properties"]["direction"]["enum"] == ["ingress", "egress"]
    priority = attach["tc"]["properties"]["priority"]
    low, high, default = priority["minimum"], priority["maximum"], priority["default"]

    def tc(**body: Any) -> dict[str, Any]:
        return bpfprogram("p", attach={"tc": {"interfaces": ["eth0"], "direction": "ingress", **body}})

    assert parse_program(tc()).targets[0].priority == default  # the API server's default, applied here too
    for value in (low, high):
        assert parse_program(tc(priority=value)).targets[0].priority == value
    for value in (low - 1, high + 1):
        with pytest.raises(ResourceError, match=r"spec\.attach\.tc\.priority"):
            parse_program(tc(priority=value))


def test_reclaim_policies_agree() -> None:
    crd = MAP_SPEC["reclaimPolicy"]
    assert parse_map(bpfmap("m")).reclaim_policy == crd["default"]
    for policy in crd["enum"]:
        assert parse_map(bpfmap("m", reclaimPolicy=policy)).reclaim_policy == policy


def test_pin_name_length_limit_agrees() -> None:
    limit = MAP_SPEC["pinName"]["maxLength"]
    assert parse_map(bpfmap("m", pinName="p" * limit)).pin_name == "p" * limit
    with pytest.raises(ResourceError, match=r"spec\.pinName"):
        parse_map(bpfmap("m", pinName="p" * (limit + 1)))


@pytest.mark.parametrize("spec", VALID_MAPS, ids=lambda s: s["type"])
def test_maps_the_api_server_accepts_are_accepted(spec: dict[str, Any]) -> None:
    parsed = parse_map({**bpfmap("m"), "spec": spec})
    assert parsed.type.name == spec["type"] and parsed.max_entries == spec["maxEntries"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [pytest.param(spec, field, id=case) for case, spec, field in INVALID_MAPS],
)
def test_maps_the_api_server_refuses_are_refused_naming_the_same_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ResourceError) as info:
        parse_map(bpfmap("m", **spec))
    assert names(field, info.value)
    assert str(info.value).startswith("BpfMap m: ")


def names(field: str, error: ResourceError) -> bool:
    """The field (test_crds.py finds it in the API server's message), or an item or key of it."""
    return any(e.path == field or e.path.startswith((f"{field}.", f"{field}[")) for e in error.errors)


@pytest.mark.parametrize(
    ("spec", "field"),
    [pytest.param(spec, field, id=case) for case, spec, field in INVALID_PROGRAMS],
)
def test_programs_the_api_server_refuses_are_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ResourceError) as info:
        parse_program(bpfprogram("p", **spec))
    assert names(field, info.value)
    assert str(info.value).startswith("BpfProgram p: ")
