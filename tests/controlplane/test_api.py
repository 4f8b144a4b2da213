"""API behaviour the agent and the controller rely on: watches, the status subresource of the shared
objects (the controller's cluster view), RBAC, and the state objects (one writer: server-side apply of
spec and status in one request, an immutable spec, a server-side field selector on spec.node, the
agent's finalizer removed by a JSON patch)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from bpfshare.api.states import (
    AGENT_FIELD_MANAGER,
    AGENT_FINALIZER,
    MAP_STATE,
    PROGRAM_STATE,
    StateKind,
    state_body,
    state_name,
)
from bpfshare.controlplane.run import ControlPlane
from tests.controlplane.objects import API_VERSION, GROUP, VERSION, bpfmap

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


VIEW = {"observedGeneration": 1, "nodes": {"selected": 2, "ready": 1, "pending": 1, "error": 0}, "ready": "1/2"}


def test_status_and_spec_are_updated_separately(custom: Any, name: str) -> None:
    created = custom.create_cluster_custom_object(GROUP, VERSION, "bpfmaps", bpfmap(name))
    try:
        assert created["metadata"]["generation"] == 1
        # Through /status: the status changes, the spec part of the patch is ignored.
        patched = custom.patch_cluster_custom_object_status(
            GROUP, VERSION, "bpfmaps", name, {"spec": {"maxEntries": 7}, "status": VIEW}
        )
        assert patched["spec"]["maxEntries"] == 1024
        assert patched["status"] == VIEW
        assert patched["metadata"]["generation"] == 1
        # Through the main resource: the spec changes (and the generation), the status part is ignored.
        patched = custom.patch_cluster_custom_object(
            GROUP, VERSION, "bpfmaps", name, {"spec": {"maxEntries": 7}, "status": {"ready": "2/2"}}
        )
        assert patched["spec"]["maxEntries"] == 7
        assert patched["status"] == VIEW
        assert patched["metadata"]["generation"] == 2
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "bpfmaps", name)


def test_status_is_validated_too(custom: Any, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    custom.create_cluster_custom_object(GROUP, VERSION, "bpfmaps", bpfmap(name))
    try:
        condition = {"type": "Ready", "status": "Maybe", "reason": "X", "message": "", "lastTransitionTime": NOW}
        with pytest.raises(ApiException) as info:
            apply_status(custom, "bpfmaps", "BpfMap", name, "bpfshare-controller", {"conditions": [condition]})
        assert info.value.status == 422 and "status.conditions[0].status" in info.value.body
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "bpfmaps", name)


NOW = "2030-01-02T03:04:05Z"
APPLY = "application/apply-patch+yaml"


def apply_state(custom: Any, kind: StateKind, resource: str, node: str, status: dict[str, Any]) -> dict[str, Any]:
    """What an agent writes: the whole state object in one server-side apply, as ``bpfshare-agent``."""
    body = state_body(kind, resource, "0f6c1f5e-0000-4000-8000-000000000000", node, status)
    name = state_name(resource, node)
    custom.patch_cluster_custom_object(
        GROUP, VERSION, kind.plural, name, body, field_manager=AGENT_FIELD_MANAGER, force=True, _content_type=APPLY
    )
    return dict(custom.get_cluster_custom_object(GROUP, VERSION, kind.plural, name))


@pytest.fixture
def states(custom: Any) -> Iterator[list[tuple[str, str]]]:
    """(plural, name) of the state objects a test made; removed after it, finalizer first."""
    made: list[tuple[str, str]] = []
    yield made
    from kubernetes.client.exceptions import ApiException

    for plural, name in made:
        try:
            custom.patch_cluster_custom_object(
                GROUP, VERSION, plural, name, {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
            custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_a_state_is_written_whole_in_one_request_and_its_spec_is_immutable(
    custom: Any, name: str, states: list[tuple[str, str]]
) -> None:
    from kubernetes.client.exceptions import ApiException

    states.append((MAP_STATE.plural, state_name(name, "node-a")))
    ready = {"phase": "Ready", "message": "", "observedGeneration": 1, "mapId": 12, "pinPath": "/p", "usedBy": ["a"]}
    obj = apply_state(custom, MAP_STATE, name, "node-a", ready)
    assert obj["spec"] == {"node": "node-a", "map": name} and obj["status"] == ready  # no status subresource
    assert obj["metadata"]["finalizers"] == [AGENT_FINALIZER]
    # Another report: one request again; fields left out (the set, now empty) go.
    moved = {"phase": "Error", "message": "changed", "observedGeneration": 2}
    assert apply_state(custom, MAP_STATE, name, "node-a", moved)["status"] == moved
    with pytest.raises(ApiException) as info:
        custom.patch_cluster_custom_object(
            GROUP, VERSION, MAP_STATE.plural, state_name(name, "node-a"), {"spec": {"node": "node-b"}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip
    assert info.value.status == 422 and "spec is immutable" in info.value.body
    with pytest.raises(ApiException) as info:  # status is no subresource of a state
        custom.get_cluster_custom_object_status(GROUP, VERSION, MAP_STATE.plural, state_name(name, "node-a"))
    assert info.value.status == 404


def test_program_state_fields_are_kept(custom: Any, name: str, states: list[tuple[str, str]]) -> None:
    """Everything the agent reports for a program round-trips (a structural schema prunes unknown fields)."""
    states.append((PROGRAM_STATE.plural, state_name(name, "node-a")))
    status = {
        "phase": "Ready",
        "message": "",
        "observedGeneration": 1,
        "programId": 41,
        "tag": "0123456789abcdef",
        "maps": {"shared_counts": 141},
        "attachments": [
            {"target": "tc:eth0:ingress", "handle": "1:0x1"},
            {"target": "cgroup:/x:egress", "linkId": 3, "pinPath": "/x", "pod": "ns/pod"},
        ],
        "attached": "tc:eth0:ingress,cgroup:/x:egress",
    }
    assert apply_state(custom, PROGRAM_STATE, name, "node-a", status)["status"] == status
    # A program whose maps went: the map left out is removed (an empty one would be null, refused).
    fewer = {k: v for k, v in status.items() if k != "maps"}
    assert apply_state(custom, PROGRAM_STATE, name, "node-a", fewer)["status"] == fewer


def test_the_field_selector_on_the_node_is_served(custom: Any, name: str, states: list[tuple[str, str]]) -> None:
    """An agent lists its own states only: the API server selects them (no other node's is sent)."""
    for node in ("node-a", "node-b"):
        states.append((MAP_STATE.plural, state_name(name, node)))
        apply_state(custom, MAP_STATE, name, node, {"phase": "Ready"})
    listed = custom.list_cluster_custom_object(GROUP, VERSION, MAP_STATE.plural, field_selector="spec.node=node-b")
    assert [i["metadata"]["name"] for i in listed["items"] if i["spec"]["map"] == name] == [state_name(name, "node-b")]
    by_map = custom.list_cluster_custom_object(
        GROUP, VERSION, MAP_STATE.plural, label_selector=f"bpfshare.io/map={name}"
    )
    assert sorted(i["spec"]["node"] for i in by_map["items"]) == ["node-a", "node-b"]


def test_the_agents_finalizer_goes_by_a_json_patch_and_then_the_state(
    custom: Any, name: str, states: list[tuple[str, str]]
) -> None:
    from kubernetes import client

    from bpfshare.agent.writer import Writer

    states.append((MAP_STATE.plural, state_name(name, "node-a")))
    apply_state(custom, MAP_STATE, name, "node-a", {"phase": "Ready"})
    writer = Writer(client.ApiClient(), "node-a")
    writer.custom = custom
    writer.delete_state(MAP_STATE, state_name(name, "node-a"))
    listed = custom.list_cluster_custom_object(GROUP, VERSION, MAP_STATE.plural, field_selector="spec.node=node-a")
    assert state_name(name, "node-a") not in [i["metadata"]["name"] for i in listed["items"]]
    writer.delete_state(MAP_STATE, state_name(name, "node-a"))  # gone: no error


def test_the_node_watch_receives_its_own_node_only(crds: ControlPlane, name: str) -> None:
    """The agent's NodeWatch: a server-side field selector, so another Node's changes never reach it."""
    import threading

    from kubernetes import client

    from bpfshare.agent.nodewatch import NodeWatch

    seen: list[tuple[str | None, dict[str, str]]] = []
    changed = threading.Event()

    def deliver(kind: str | None, body: dict[str, Any]) -> None:
        seen.append((kind, dict((body.get("metadata") or {}).get("labels") or {})))
        changed.set()

    mine, other = f"{name}-mine", f"{name}-other"
    for node in (mine, other):
        crds.kubectl(
            "create", "-f", "-", input=f'{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{node}"}}}}'
        )
    with crds.api_client() as api:
        watch = NodeWatch(client.CoreV1Api(api), mine, deliver, server_timeout=5)
        try:
            assert (watch.list() or {})["metadata"]["name"] == mine
            watch.start()
            time.sleep(0.5)
            crds.kubectl("label", "node", other, "zone=b")
            crds.kubectl("label", "node", mine, "zone=a")
            assert changed.wait(10)
            crds.kubectl("delete", "node", mine)
            deadline = time.monotonic() + 10
            while not any(kind == "DELETED" for kind, _ in seen):
                assert time.monotonic() < deadline, seen
                time.sleep(0.1)
            assert [labels for kind, labels in seen if kind == "MODIFIED"][:1] == [{"zone": "a"}]
            assert all(labels.get("zone") != "b" for _, labels in seen)
        finally:
            watch.stop()
            crds.kubectl("delete", "node", mine, other, "--ignore-not-found", check=False)


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


def test_map_state_fields_are_kept(custom: Any, name: str, states: list[tuple[str, str]]) -> None:
    """Everything the agent reports for a map round-trips (a structural schema prunes unknown fields)."""
    states.append((MAP_STATE.plural, state_name(name, "n1")))
    status = {
        "phase": "Error",
        "message": "Type: Hash changed to Array",
        "observedGeneration": 1,
        "mapId": 12,
        "pinPath": "/sys/fs/bpf/bpfshare/maps/x",
        "usedBy": ["a", "b"],
        "adoptedFrom": "/sys/fs/bpf/tc/globals/x",
    }
    assert apply_state(custom, MAP_STATE, name, "n1", status)["status"] == status
