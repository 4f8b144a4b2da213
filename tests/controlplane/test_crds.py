"""The CRDs on a real kube-apiserver: established, structural schema and CEL rules enforced, columns."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bpfshare.controlplane.run import ControlPlane
from tests.controlplane.objects import GROUP, VERSION, bpfmap, bpfprogram
from tests.fixtures.cluster import CRD_NAMES

pytestmark = pytest.mark.cluster

ATTACH_TC = {"tc": {"interfaces": ["eth0"], "direction": "ingress"}}
ATTACH_CGROUP = {"cgroup": {"path": "/", "type": "egress"}}


def test_the_crds_are_established(crds: ControlPlane) -> None:
    assert len(CRD_NAMES) == 4  # BpfMap, BpfProgram and the nodes' states of each
    for crd in CRD_NAMES:
        out = json.loads(crds.kubectl("get", f"crd/{crd}", "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in out["status"]["conditions"]}
        assert conditions.get("Established") == "True", conditions
        assert conditions.get("NamesAccepted") == "True", conditions
        assert out["spec"]["scope"] == "Cluster"
        assert out["spec"]["names"]["categories"] == ["bpf"]


def test_short_names_and_category(crds: ControlPlane, name: str) -> None:
    """What API discovery reports, and what kubectl makes of it: the short names resolve to their kind,
    and `kubectl get bpf` (the category) lists objects of the kinds (the states among them)."""
    discovery = json.loads(crds.kubectl("get", "--raw", f"/apis/{GROUP}/{VERSION}").stdout)
    advertised = {
        r["name"]: (sorted(r.get("shortNames", [])), r.get("categories"))
        for r in discovery["resources"]
        if "/" not in r["name"]  # not the status subresources
    }
    assert advertised == {
        "bpfmaps": (["bpfmap"], ["bpf"]),
        "bpfprograms": (["bpfprog", "bpfprogs"], ["bpf"]),
        "bpfmapstates": (["bpfmapstate"], ["bpf"]),
        "bpfprogramstates": (["bpfprogstate", "bpfprogstates"], ["bpf"]),
    }
    objects = [bpfmap(name), bpfprogram(name, maps={"shared_counts": name})]
    crds.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    try:
        for resource, kind in [
            ("bpfmaps", "bpfmap"),
            ("bpfmap", "bpfmap"),
            ("bpfprograms", "bpfprogram"),
            ("bpfprog", "bpfprogram"),
            ("bpfprogs", "bpfprogram"),
        ]:
            out = crds.kubectl("get", resource, name, "-o", "name").stdout.split()
            assert out == [f"{kind}.{GROUP}/{name}"], resource
        listed = crds.kubectl("get", "bpf", "-o", "name").stdout.split()
        assert {f"bpfmap.{GROUP}/{name}", f"bpfprogram.{GROUP}/{name}"} <= set(listed)
        kinds = {f"bpfmap.{GROUP}", f"bpfprogram.{GROUP}", f"bpfmapstate.{GROUP}", f"bpfprogramstate.{GROUP}"}
        assert {entry.split("/")[0] for entry in listed} <= kinds
        unknown = crds.kubectl("get", "bpfmapz", check=False)  # kubectl does refuse an unknown name
        assert unknown.returncode != 0 and "the server doesn't have a resource type" in unknown.stderr
    finally:
        crds.kubectl("delete", "bpfmap,bpfprogram", name, "--ignore-not-found", "--wait=false", check=False)


def create(custom: Any, plural: str, body: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    return custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        plural,
        body,  # type: ignore[no-any-return]
        dry_run="All" if dry_run else None,
    )


def rejection(custom: Any, plural: str, body: dict[str, Any]) -> str:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        create(custom, plural, body, dry_run=True)
    assert info.value.status == 422, info.value.body
    return str(json.loads(info.value.body)["message"])


def test_spec_examples_are_accepted_with_defaults(custom: Any, name: str) -> None:
    created = create(
        custom,
        "bpfmaps",
        bpfmap(
            name,
            flags=["NoPrealloc"],
            pinName="flow_counts",
            adopt="/sys/fs/bpf/tc/globals/flow_counts",
            nodeSelector={"matchLabels": {"bpf": "yes"}},
        ),
    )
    assert created["spec"]["reclaimPolicy"] == "Delete"
    prog = create(custom, "bpfprograms", bpfprogram(name, maps={"shared_counts": name}))
    assert prog["spec"]["attach"]["tc"]["priority"] == 1
    custom.delete_cluster_custom_object(GROUP, VERSION, "bpfmaps", name)
    custom.delete_cluster_custom_object(GROUP, VERSION, "bpfprograms", name)


VALID_MAPS: list[dict[str, Any]] = [
    {"type": "Array", "keySize": 4, "valueSize": 64, "maxEntries": 1},
    {"type": "RingBuf", "keySize": 0, "valueSize": 0, "maxEntries": 4096},
    {"type": "RingBuf", "keySize": 0, "valueSize": 0, "maxEntries": 1 << 24},
    {"type": "Queue", "keySize": 0, "valueSize": 8, "maxEntries": 16},
    {"type": "BloomFilter", "keySize": 0, "valueSize": 4, "maxEntries": 100},
    {"type": "LpmTrie", "keySize": 8, "valueSize": 4, "maxEntries": 255, "flags": ["NoPrealloc"]},
    {"type": "ProgArray", "keySize": 4, "valueSize": 4, "maxEntries": 8},
    {
        "type": "Hash",
        "keySize": 4,
        "valueSize": 8,
        "maxEntries": 8,
        "nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Exists"}]},
    },
]


@pytest.mark.parametrize("spec", VALID_MAPS, ids=lambda s: s["type"])
def test_valid_maps_are_accepted(custom: Any, name: str, spec: dict[str, Any]) -> None:
    create(custom, "bpfmaps", {**bpfmap(name), "spec": spec}, dry_run=True)


INVALID_MAPS: list[tuple[str, dict[str, Any], str]] = [
    ("pin-name-slash", {"pinName": "a/b"}, "spec.pinName"),
    ("pin-name-dotdot", {"pinName": ".."}, "spec.pinName"),
    ("array-key-8", {"type": "Array", "keySize": 8}, "spec.keySize"),
    ("hash-key-0", {"keySize": 0}, "spec.keySize"),
    ("queue-key-4", {"type": "Queue", "keySize": 4}, "spec.keySize"),
    ("ringbuf-value", {"type": "RingBuf", "keySize": 0, "valueSize": 8, "maxEntries": 4096}, "spec.valueSize"),
    ("ringbuf-not-pow2", {"type": "RingBuf", "keySize": 0, "valueSize": 0, "maxEntries": 12288}, "spec.maxEntries"),
    ("ringbuf-small", {"type": "RingBuf", "keySize": 0, "valueSize": 0, "maxEntries": 2048}, "spec.maxEntries"),
    ("progarray-value-8", {"type": "ProgArray", "valueSize": 8}, "spec.valueSize"),
    ("unknown-type", {"type": "Nope"}, "spec.type"),
    ("unknown-flag", {"flags": ["Fast"]}, "spec.flags"),
    ("max-entries-0", {"maxEntries": 0}, "spec.maxEntries"),
    ("key-too-big", {"keySize": 513}, "spec.keySize"),
    ("adopt-relative", {"adopt": "tc/globals/x"}, "spec.adopt"),
    ("adopt-escape", {"adopt": "/sys/fs/bpf/tc/../../x"}, "spec.adopt"),
    ("reclaim", {"reclaimPolicy": "Keep"}, "spec.reclaimPolicy"),
    (
        "selector-in-without-values",
        {"nodeSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}},
        "spec.nodeSelector.matchExpressions[0]",
    ),
]


@pytest.mark.parametrize(("spec", "field"), [c[1:] for c in INVALID_MAPS], ids=[c[0] for c in INVALID_MAPS])
def test_invalid_maps_are_rejected_naming_the_field(custom: Any, name: str, spec: dict[str, Any], field: str) -> None:
    body = bpfmap(name, **spec)
    assert field in rejection(custom, "bpfmaps", body)


def test_required_map_fields(custom: Any, name: str) -> None:
    body = bpfmap(name)
    del body["spec"]["keySize"], body["spec"]["maxEntries"]
    message = rejection(custom, "bpfmaps", body)
    assert "spec.keySize" in message and "spec.maxEntries" in message


def test_dotted_name_needs_an_explicit_pin_name(custom: Any, name: str) -> None:
    assert "spec.pinName" in rejection(custom, "bpfmaps", bpfmap(f"{name}.x"))
    create(custom, "bpfmaps", bpfmap(f"{name}.x", pinName=name), dry_run=True)


INVALID_PROGRAMS: list[tuple[str, dict[str, Any], str]] = [
    ("two-sources", {"bytecode": {"path": "/a.o", "inline": "aGVsbG8="}}, "spec.bytecode"),
    ("no-source", {"bytecode": {"sha256": ""}}, "spec.bytecode"),
    ("two-attach-kinds", {"attach": {**ATTACH_TC, **ATTACH_CGROUP}}, "spec.attach"),
    ("no-attach-kind", {"attach": {}}, "spec.attach"),
    ("bad-sha256", {"bytecode": {"path": "/a.o", "sha256": "ABC"}}, "spec.bytecode.sha256"),
    ("inline-not-base64", {"bytecode": {"inline": "not base64!"}}, "spec.bytecode.inline"),
    ("relative-path", {"bytecode": {"path": "a.o"}}, "spec.bytecode.path"),
    ("no-interfaces", {"attach": {"tc": {"interfaces": [], "direction": "ingress"}}}, "spec.attach.tc.interfaces"),
    ("bad-direction", {"attach": {"tcx": {"interfaces": ["eth0"], "direction": "up"}}}, "spec.attach.tcx.direction"),
    (
        "priority-0",
        {"attach": {"tc": {"interfaces": ["eth0"], "direction": "ingress", "priority": 0}}},
        "spec.attach.tc.priority",
    ),
    ("cgroup-escape", {"attach": {"cgroup": {"path": "/a/../..", "type": "egress"}}}, "spec.attach.cgroup.path"),
    ("cgroup-type", {"attach": {"cgroup": {"path": "/", "type": "xdp"}}}, "spec.attach.cgroup.type"),
    ("map-target-not-a-name", {"maps": {"m": "Not_A_Name"}}, "spec.maps.m"),
    (
        "configmap-incomplete",
        {"bytecode": {"configMap": {"name": "x", "key": "y"}}},
        "spec.bytecode.configMap.namespace",
    ),
]


@pytest.mark.parametrize(("spec", "field"), [c[1:] for c in INVALID_PROGRAMS], ids=[c[0] for c in INVALID_PROGRAMS])
def test_invalid_programs_are_rejected_naming_the_field(
    custom: Any, name: str, spec: dict[str, Any], field: str
) -> None:
    assert field in rejection(custom, "bpfprograms", bpfprogram(name, **spec))


def test_program_without_program_name_is_rejected(custom: Any, name: str) -> None:
    body = bpfprogram(name)
    del body["spec"]["program"]
    assert "spec.program" in rejection(custom, "bpfprograms", body)


@pytest.mark.parametrize(
    "bytecode",
    [
        {"path": "/opt/x.o", "sha256": "a" * 64},
        {"configMap": {"namespace": "default", "name": "objs", "key": "x.o"}},
        {"inline": "f0VMRg==", "sha256": ""},
        # Standard base64 with '/' and '+' (a real object's encoding has them; see the CRD's comment).
        {
            "inline": "f0VMRgIBAQAAAAAAAAAAAAEA9wABAAAAAAAAAAAAAAAAAAAAAAAAAIgtAAAAAAAAAAAAAEAAAAAA"
            "AEAAIgABALcBAAAAAAAAYxr8/wAA+w=="
        },
    ],
)
@pytest.mark.parametrize(
    "attach",
    [
        ATTACH_TC,
        ATTACH_CGROUP,
        {"tcx": {"interfaces": ["eth0", "veth1"], "direction": "egress", "networkNamespace": "ns1"}},
    ],
)
def test_valid_programs_are_accepted(custom: Any, name: str, bytecode: dict[str, Any], attach: dict[str, Any]) -> None:
    create(custom, "bpfprograms", bpfprogram(name, bytecode=bytecode, attach=attach), dry_run=True)


def view(ready: str, reason: str, generation: int = 1) -> dict[str, Any]:
    """A cluster view as the controller writes it (Ready condition with ``reason``)."""
    return {
        "observedGeneration": generation,
        "nodes": {"selected": 2, "ready": int(ready[0]), "pending": 0, "error": 2 - int(ready[0])},
        "ready": ready,
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if reason == "AllNodesReady" else "False",
                "reason": reason,
                "message": "",
                "observedGeneration": generation,
                "lastTransitionTime": "2030-01-02T03:04:05Z",
            }
        ],
    }


def apply_view(custom: Any, plural: str, kind: str, name: str, status: dict[str, Any]) -> None:
    custom.patch_cluster_custom_object_status(
        GROUP, VERSION, plural, name,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "status": status},
        field_manager="bpfshare-controller", _content_type="application/apply-patch+yaml",
    )  # fmt: skip


def test_printer_columns(crds: ControlPlane, custom: Any, name: str) -> None:
    """The cluster view's columns: ready nodes of the selected ones and the Ready reason, whatever the
    number of nodes."""
    create(custom, "bpfmaps", bpfmap(name, type="LruHash", keySize=16, valueSize=32, maxEntries=4096))
    create(custom, "bpfprograms", bpfprogram(name, attach=ATTACH_CGROUP, program="count_egress"))
    try:
        apply_view(custom, "bpfmaps", "BpfMap", name, view("1/2", "NodeErrors"))
        lines = crds.kubectl("get", "bpfmaps", name).stdout.splitlines()
        assert lines[0].split() == ["NAME", "TYPE", "KEY", "VALUE", "MAXENTRIES", "READY", "REASON", "AGE"]
        assert lines[1].split()[:7] == [name, "LruHash", "16", "32", "4096", "1/2", "NodeErrors"]

        apply_view(
            custom, "bpfprograms", "BpfProgram", name, {**view("2/2", "AllNodesReady"), "attach": "cgroup/egress /"}
        )
        lines = crds.kubectl("get", "bpfprogs", name).stdout.splitlines()
        assert lines[0].split() == ["NAME", "ATTACH", "PROGRAM", "READY", "REASON", "AGE"]
        row = lines[1].split()
        assert row[0] == name
        assert row[1:3] == ["cgroup/egress", "/"]  # status.attach, written by the controller
        assert row[3:6] == ["count_egress", "2/2", "AllNodesReady"]
        waited = crds.kubectl("wait", "--for=condition=Ready", f"bpfprogram/{name}", "--timeout=5s")
        assert "condition met" in waited.stdout
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "bpfmaps", name)
        custom.delete_cluster_custom_object(GROUP, VERSION, "bpfprograms", name)


def test_state_printer_columns(crds: ControlPlane, custom: Any, name: str) -> None:
    """The node view: `kubectl get bpfmapstates -l bpfshare.io/map=X` is the map ID on every node."""
    from bpfshare.api.states import MAP_STATE, PROGRAM_STATE, state_body, state_name

    made = []
    try:
        for node, map_id, phase in (("node-a", 17, "Ready"), ("node-b", 4, "Error")):
            for kind, status in (
                (MAP_STATE, {"phase": phase, "mapId": map_id, "observedGeneration": 1}),
                (
                    PROGRAM_STATE,
                    {
                        "phase": phase,
                        "programId": map_id + 1,
                        "maps": {"counts": map_id},
                        "attached": "tc:eth0:ingress",
                    },
                ),
            ):
                made.append((kind.plural, state_name(name, node)))
                custom.patch_cluster_custom_object(
                    GROUP, VERSION, kind.plural, state_name(name, node), state_body(kind, name, None, node, status),
                    field_manager="bpfshare-agent", force=True, _content_type="application/apply-patch+yaml",
                )  # fmt: skip
        lines = crds.kubectl("get", "bpfmapstates", "-l", f"bpfshare.io/map={name}").stdout.splitlines()
        assert lines[0].split() == ["NAME", "MAP", "NODE", "MAPID", "PHASE", "AGE"]
        rows = sorted(line.split()[:5] for line in lines[1:])
        assert rows == [
            [f"{name}.node-a", name, "node-a", "17", "Ready"],
            [f"{name}.node-b", name, "node-b", "4", "Error"],
        ]
        lines = crds.kubectl("get", "bpfprogramstates", "-l", "bpfshare.io/node=node-b").stdout.splitlines()
        assert lines[0].split() == ["NAME", "PROGRAM", "NODE", "PROGRAMID", "MAPS", "ATTACHMENTS", "PHASE", "AGE"]
        row = next(line.split() for line in lines[1:] if line.startswith(f"{name}."))
        assert row[1:7] == [name, "node-b", "5", '{"counts":4}', "tc:eth0:ingress", "Error"]
    finally:
        for plural, state in made:
            custom.patch_cluster_custom_object(
                GROUP, VERSION, plural, state, {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
            custom.delete_cluster_custom_object(GROUP, VERSION, plural, state)


def test_state_lists_and_maps_emptied_by_one_apply(crds: ControlPlane, custom: Any, name: str) -> None:
    """usedBy and maps are atomic: the agent's apply of [] or {} over a full value stores the empty value
    (a per-item set or a per-key map would drop the field, or store a null the schema refuses)."""
    from kubernetes.client.exceptions import ApiException

    from bpfshare.api.states import MAP_STATE, PROGRAM_STATE, state_body, state_name

    state = state_name(name, "node-a")
    apply = {"field_manager": "bpfshare-agent", "force": True, "_content_type": "application/apply-patch+yaml"}
    try:
        for kind, field, full, empty in (
            (MAP_STATE, "usedBy", ["p1", "p2"], []),
            (PROGRAM_STATE, "maps", {"m": 3}, {}),
        ):
            for value in (full, empty):
                status = {"phase": "Ready", "observedGeneration": 1, field: value}
                body = state_body(kind, name, None, "node-a", status)
                custom.patch_cluster_custom_object(GROUP, VERSION, kind.plural, state, body, **apply)
                stored = custom.get_cluster_custom_object(GROUP, VERSION, kind.plural, state)
                assert stored["status"][field] == value
    finally:
        for kind in (MAP_STATE, PROGRAM_STATE):
            try:
                custom.patch_cluster_custom_object(
                    GROUP, VERSION, kind.plural, state, {"metadata": {"finalizers": None}},
                    _content_type="application/merge-patch+json",
                )  # fmt: skip
                custom.delete_cluster_custom_object(GROUP, VERSION, kind.plural, state)
            except ApiException as exc:
                if exc.status != 404:  # 404: the test stopped before making it
                    raise
