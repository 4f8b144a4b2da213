"""Resource parsing and validation as `bpfshare apply -f` does it (no API server to do it there)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bpfshare.api.resources import NodeSelector, ResourceError, parse_map, parse_program
from bpfshare.api.targets import CgroupTarget, TcTarget, TcxTarget
from bpfshare.types import MapFlag, MapType

MAP: dict[str, Any] = {
    "apiVersion": "bpfshare.io/v1alpha1",
    "kind": "BpfMap",
    "metadata": {"name": "flow-counts", "generation": 3},
    "spec": {"type": "Hash", "keySize": 4, "valueSize": 8, "maxEntries": 1024, "flags": ["NoPrealloc"]},
}
PROG: dict[str, Any] = {
    "apiVersion": "bpfshare.io/v1alpha1",
    "kind": "BpfProgram",
    "metadata": {"name": "count-ingress"},
    "spec": {
        "bytecode": {"path": "/opt/bpfshare/bpf/flow_counter.o"},
        "program": "count_ingress",
        "attach": {"tc": {"interfaces": ["eth0", "eth1"], "direction": "ingress", "priority": 7}},
        "maps": {"shared_counts": "flow-counts"},
    },
}


def with_spec(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            obj["spec"].pop(key, None)
        else:
            obj["spec"][key] = value
    return obj


def test_map_defaults_and_fields() -> None:
    res = parse_map(MAP)
    assert res.type is MapType.Hash
    assert (res.key_size, res.value_size, res.max_entries) == (4, 8, 1024)
    assert res.flags == MapFlag.NoPrealloc
    assert res.pin_name == "flow-counts"  # default: metadata.name
    assert res.reclaim_policy == "Delete"
    assert res.meta.generation == 3


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"pinName": "a/b"}, "spec.pinName"),
        ({"pinName": ".."}, "spec.pinName"),
        ({"type": "Bogus"}, "spec.type"),
        ({"keySize": "4"}, "spec.keySize"),
        ({"maxEntries": -1}, "spec.maxEntries"),
        ({"flags": ["Nope"]}, "spec.flags"),
        ({"adopt": "relative/path"}, "spec.adopt"),
        ({"adopt": "/sys/fs/bpf/../../etc"}, "spec.adopt"),
        ({"reclaimPolicy": "Keep"}, "spec.reclaimPolicy"),
    ],
)
def test_map_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ResourceError, match=field.replace(".", r"\.")):
        parse_map(with_spec(MAP, **changes))


def test_program_targets_one_per_interface() -> None:
    res = parse_program(PROG)
    assert res.targets == (TcTarget("eth0", "ingress", None, 7), TcTarget("eth1", "ingress", None, 7))
    assert res.maps == (("shared_counts", "flow-counts"),)
    assert res.attach_kind == "tc"


def test_program_tcx_and_cgroup() -> None:
    tcx = parse_program(
        with_spec(PROG, attach={"tcx": {"interfaces": ["veth0"], "direction": "egress", "networkNamespace": "ns1"}})
    )
    assert tcx.targets == (TcxTarget("veth0", "egress", "ns1"),)
    cg = parse_program(with_spec(PROG, attach={"cgroup": {"path": "/kubepods", "type": "connect4"}}))
    assert cg.targets == (CgroupTarget("/kubepods", "connect4"),)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"bytecode": {"path": "/x.o", "inline": "AAAA"}}, "spec.bytecode"),
        ({"bytecode": {}}, "spec.bytecode"),
        ({"bytecode": {"path": "/x.o", "sha256": "XYZ"}}, "spec.bytecode.sha256"),
        ({"bytecode": {"configMap": {"name": "x"}}}, "spec.bytecode.configMap"),
        (
            {"attach": {"tc": {"interfaces": ["a"], "direction": "ingress"}, "cgroup": {"type": "egress"}}},
            "spec.attach",
        ),
        ({"attach": {"tc": {"interfaces": [], "direction": "ingress"}}}, "spec.attach.tc.interfaces"),
        ({"attach": {"tc": {"interfaces": ["a"]}}}, "spec.attach.tc.direction"),
        ({"attach": {"tc": {"interfaces": ["a"], "direction": "sideways"}}}, "spec.attach.tc.direction"),
        ({"attach": {"cgroup": {"path": "/", "type": "teleport"}}}, "spec.attach.cgroup.type"),
        ({"attach": {"cgroup": {"path": "../escape", "type": "egress"}}}, "spec.attach.cgroup.path"),
        ({"program": None}, "spec.program"),
        ({"maps": {"m": "Not_A_Name"}}, "spec.maps.m"),
    ],
)
def test_program_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ResourceError, match=field.replace(".", r"\.")):
        parse_program(with_spec(PROG, **changes))


def test_bad_metadata_name() -> None:
    obj = copy.deepcopy(MAP)
    obj["metadata"]["name"] = "Upper_Case"
    with pytest.raises(ResourceError, match=r"metadata\.name"):
        parse_map(obj)


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        (None, {}, True),
        ({"matchLabels": {"role": "edge"}}, {"role": "edge", "x": "y"}, True),
        ({"matchLabels": {"role": "edge"}}, {"role": "core"}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, {"zone": "b"}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, {}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"gpu": ""}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"gpu": "1"}, False),
    ],
)
def test_node_selector(selector: dict[str, Any] | None, labels: dict[str, str], matches: bool) -> None:
    assert NodeSelector.parse(selector, "spec.nodeSelector").matches(labels) is matches


def test_node_selector_unknown_operator() -> None:
    with pytest.raises(ResourceError, match="operator"):
        NodeSelector.parse({"matchExpressions": [{"key": "a", "operator": "Near"}]}, "spec.nodeSelector")


def test_attach_summary_for_kubectl_get() -> None:
    from bpfshare.api.resources import attach_summary

    assert attach_summary(PROG) == "tc/ingress eth0,eth1"
    tcx = with_spec(PROG, attach={"tcx": {"interfaces": ["v0"], "direction": "egress", "networkNamespace": "n"}})
    assert attach_summary(tcx) == "tcx/egress v0@n"
    cgroup = with_spec(PROG, attach={"cgroup": {"path": "/a", "type": "connect4"}})
    assert attach_summary(cgroup) == "cgroup/connect4 /a"
