"""API behaviour the agent relies on: watches, the status subresource, RBAC, per-node server-side apply."""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest

from bpfshare.controlplane.run import ControlPlane
from tests.controlplane.objects import API_VERSION, GROUP, VERSION, bpfmap, bpfprogram

pytestmark = pytest.mark.cluster


def test_watch_delivers_added_modified_deleted(custom: Any, name: str) -> None:
    from kubernetes import watch

    start = custom.list_cluster_custom_object(GROUP, VERSION, "bpfmaps")["metadata"]["resourceVersion"]
    custom.create_cluster_custom_object(GROUP, VERSION, "bpfmaps", bpfmap(name))
    custom.patch_cluster_custom_object(GROUP, VERSION, "bpfmaps", name, {"spec": {"maxEntries": 2048}})
    custom.delete_cluster_custom_object(GROUP, VERSION, "bpfmaps", name)

    seen: list[tuple[str, int]] = []
    stream = watch.Watch().stream(
        custom.list_cluster_custom_object,
        GROUP,
        VERSION,
        "bpfmaps",
        resource_version=start,
        field_selector=f"metadata.name={name}",
        timeout_seconds=20,
    )
    for event in stream:
        seen.append((event["type"], event["object"]["spec"]["maxEntries"]))
        if event["type"] == "DELETED":
            break
    assert seen == [("ADDED", 1024), ("MODIFIED", 2048), ("DELETED", 2048)]


def apply_status(
    custom: Any, plural: str, kind: str, name: str, manager: str, status: dict[str, Any]
) -> dict[str, Any]:
    """Server-side apply of ``status`` through the status subresource, as field manager ``manager``."""
    body = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "status": status}
    return custom.patch_cluster_custom_object_status(  # type: ignore[no-any-return]
        GROUP,
        VERSION,
        plural,
        name,
        body,
        field_manager=manager,
        force=True,
        _content_type="application/apply-patch+yaml",
    )


def test_status_and_spec_are_updated_separately(custom: Any, name: str) -> None:
    created = custom.create_cluster_custom_object(GROUP, VERSION, "bpfmaps", bpfmap(name))
    try:
        assert created["metadata"]["generation"] == 1
        # Through /status: the status changes, the spec part of the patch is ignored.
        patched = custom.patch_cluster_custom_object_status(
            GROUP,
            VERSION,
            "bpfmaps",
            name,
            {"spec": {"maxEntries": 7}, "status": {"nodes": [{"node": "n1", "phase": "Pending"}]}},
        )
        assert patched["spec"]["maxEntries"] == 1024
        assert patched["status"]["nodes"] == [{"node": "n1", "phase": "Pending"}]
        assert patched["metadata"]["generation"] == 1
        # Through the main resource: the spec changes (and the generation), the status part is ignored.
        patched = custom.patch_cluster_custom_object(
            GROUP,
            VERSION,
            "bpfmaps",
            name,
            {"spec": {"maxEntries": 7}, "status": {"nodes": [{"node": "n1", "phase": "Ready"}]}},
        )
        assert patched["spec"]["maxEntries"] == 7
        assert patched["status"]["nodes"] == [{"node": "n1", "phase": "Pending"}]
        assert patched["metadata"]["generation"] == 2
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "bpfmaps", name)


def test_status_is_validated_too(custom: Any, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    custom.create_cluster_custom_object(GROUP, VERSION, "bpfmaps", bpfmap(name))
    try:
        with pytest.raises(ApiException) as info:
            apply_status(custom, "bpfmaps", "BpfMap", name, "agent-n1", {"nodes": [{"node": "n1", "phase": "Happy"}]})
        assert info.value.status == 422 and "status.nodes[0].phase" in info.value.body
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "bpfmaps", name)


def test_each_agent_applies_its_own_node_entry(custom: Any, name: str) -> None:
    """Two field managers (two nodes' agents) server-side-apply different entries: both survive."""
    custom.create_cluster_custom_object(GROUP, VERSION, "bpfprograms", bpfprogram(name))
    try:

        def entry(node: str, prog_id: int, phase: str) -> dict[str, Any]:
            return {
                "nodes": [
                    {
                        "node": node,
                        "phase": phase,
                        "programId": prog_id,
                        "tag": "0123456789abcdef",
                        "maps": {"shared_counts": prog_id + 100},
                        "observedGeneration": 1,
                        "attachments": [
                            {"target": "eth0/ingress", "handle": "1:0x1"},
                            {"target": "eth1/ingress", "linkId": 3, "pinPath": "/x"},
                        ],
                    }
                ],
                "programIds": {node: prog_id},
                "phases": {node: phase},
            }

        apply = functools.partial(apply_status, custom, "bpfprograms", "BpfProgram", name)
        apply("bpfshare-agent/node-a", entry("node-a", 41, "Ready"))
        apply("bpfshare-agent/node-b", entry("node-b", 7, "Pending"))
        # node-b moves on; node-a's entry is untouched.
        obj = apply("bpfshare-agent/node-b", entry("node-b", 8, "Ready"))
        nodes = {n["node"]: n for n in obj["status"]["nodes"]}
        assert set(nodes) == {"node-a", "node-b"}
        assert nodes["node-a"] == entry("node-a", 41, "Ready")["nodes"][0]  # every field kept, none pruned
        assert (nodes["node-b"]["programId"], nodes["node-b"]["phase"]) == (8, "Ready")
        assert obj["status"]["programIds"] == {"node-a": 41, "node-b": 8}
        assert obj["status"]["phases"] == {"node-a": "Ready", "node-b": "Ready"}
        fields = obj["metadata"]["managedFields"]
        managers = {m["manager"] for m in fields if m.get("subresource") == "status"}
        assert managers == {"bpfshare-agent/node-a", "bpfshare-agent/node-b"}
        # node-a withdraws (e.g. its node no longer matches the selector): only its data goes.
        obj = apply("bpfshare-agent/node-a", {})
        assert [n["node"] for n in obj["status"]["nodes"]] == ["node-b"]
        assert obj["status"]["programIds"] == {"node-b": 8}
        assert obj["status"]["phases"] == {"node-b": "Ready"}
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "bpfprograms", name)


def test_rbac_denies_a_user_without_bindings(crds: ControlPlane, name: str) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    with crds.api_client(token=crds.unprivileged_token) as nobody_client:
        nobody = client.CustomObjectsApi(nobody_client)
        with pytest.raises(ApiException) as info:
            nobody.list_cluster_custom_object(GROUP, VERSION, "bpfmaps")
        assert info.value.status == 403
        assert "bpfshare-nobody" in info.value.body and "cannot list resource" in info.value.body
        with pytest.raises(ApiException) as info:
            nobody.create_cluster_custom_object(GROUP, VERSION, "bpfmaps", bpfmap(name))
        assert info.value.status == 403

        # The token does authenticate: a binding grants exactly what it says.
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": [GROUP], "resources": ["bpfmaps"], "verbs": ["list"]}],
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bpfshare-nobody"}],
        }
        with crds.api_client() as admin_client:
            rbac = client.RbacAuthorizationV1Api(admin_client)
            rbac.create_cluster_role(role)
            rbac.create_cluster_role_binding(binding)
            try:
                deadline = time.monotonic() + 10
                while True:  # the authorizer learns about new bindings from a watch
                    try:
                        nobody.list_cluster_custom_object(GROUP, VERSION, "bpfmaps")
                        break
                    except ApiException as exc:
                        assert exc.status == 403 and time.monotonic() < deadline
                        time.sleep(0.1)
                with pytest.raises(ApiException) as info:
                    nobody.list_cluster_custom_object(GROUP, VERSION, "bpfprograms")
                assert info.value.status == 403
            finally:
                rbac.delete_cluster_role_binding(name)
                rbac.delete_cluster_role(name)


def test_kubectl_with_an_unprivileged_token_is_forbidden(crds: ControlPlane) -> None:
    result = crds.kubectl("get", "bpfmaps", token=crds.unprivileged_token, check=False)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr or "forbidden" in result.stderr


def test_map_status_fields_are_kept(custom: Any, name: str) -> None:
    """Everything the agent reports for a map round-trips (a structural schema prunes unknown fields)."""
    custom.create_cluster_custom_object(GROUP, VERSION, "bpfmaps", bpfmap(name))
    try:
        entry = {
            "node": "n1",
            "phase": "Error",
            "message": "Type: Hash changed to Array",
            "observedGeneration": 1,
            "lastUpdated": "2026-01-02T03:04:05Z",
            "mapId": 12,
            "pinPath": "/sys/fs/bpf/bpfshare/maps/x",
            "usedBy": ["a", "b"],
            "adoptedFrom": "/sys/fs/bpf/tc/globals/x",
        }
        obj = apply_status(
            custom,
            "bpfmaps",
            "BpfMap",
            name,
            "agent-n1",
            {"nodes": [entry], "mapIds": {"n1": 12}, "phases": {"n1": "Error"}},
        )
        assert obj["status"] == {"nodes": [entry], "mapIds": {"n1": 12}, "phases": {"n1": "Error"}}
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "bpfmaps", name)
