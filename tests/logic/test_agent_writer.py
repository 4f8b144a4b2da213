"""What the agent writes to the API server (agent/writer.py), with the Kubernetes client's API objects
replaced by recorders: a state object is one server-side apply of the whole body as field manager
``bpfshare-agent``; a state goes by dropping the agent's finalizer (exactly it) and deleting it; the
node's states are listed with a server-side field selector; and what becomes of API errors."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from bpfshare.agent.writer import APPLY, JSON_PATCH, Writer
from bpfshare.api.states import AGENT_FINALIZER, MAP_STATE, PROGRAM_STATE, state_body
from bpfshare.errors import BpfshareError

# -- the writes --------------------------------------------------------------------------------------


class Recorder:
    """Stands in for CustomObjectsApi and CoreV1Api: records calls, raises what ``fail`` holds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail: ApiException | None = None
        self.failures: dict[str, ApiException] = {}  # by call name
        self.config_map: Any = None
        self.results: dict[str, Any] = {}  # by call name

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args, kwargs))
        if self.fail is not None:
            raise self.fail
        if name in self.failures:
            raise self.failures.pop(name)
        return self.results.get(name, self.config_map)

    def patch_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("patch", *args, **kwargs)

    def get_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("get", *args, **kwargs)

    def delete_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("delete", *args, **kwargs)

    def list_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("list", *args, **kwargs)

    def create_namespaced_event(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("event", *args, **kwargs)

    def read_namespaced_config_map(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("read_config_map", *args, **kwargs)


@pytest.fixture
def writer() -> Writer:
    w = Writer(None, "worker-1")
    w.custom = Recorder()
    w.core = Recorder()
    return w


def only_call(api: Any) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    (call,) = api.calls
    return call  # type: ignore[no-any-return]


def api_error(status: int, message: str | None = None, reason: str = "Reason") -> ApiException:
    body = json.dumps({"kind": "Status", "message": message}) if message is not None else None
    return ApiException(status=status, reason=reason, body=body)


STATUS = {"phase": "Ready", "message": "", "observedGeneration": 3, "mapId": 42, "pinPath": "/p", "usedBy": []}


def test_a_state_is_one_forced_server_side_apply_of_the_whole_body(writer: Writer) -> None:
    body: dict[str, Any] = state_body(MAP_STATE, "flow-counts", "u-1", "worker-1", STATUS)  # type: ignore[assignment]
    writer.custom.results["patch"] = {"metadata": {"name": "flow-counts.worker-1"}}  # type: ignore[attr-defined]
    assert writer.apply_state(MAP_STATE, body) == {"metadata": {"name": "flow-counts.worker-1"}}
    name, args, kwargs = only_call(writer.custom)
    assert name == "patch"  # the object itself: status is no subresource of a state
    assert args == ("bpfshare.io", "v1alpha1", "bpfmapstates", "flow-counts.worker-1", body)
    assert kwargs == {"field_manager": "bpfshare-agent", "force": True, "_content_type": APPLY}
    assert writer.requests == 1


def test_a_state_goes_finalizer_first_then_the_object(writer: Writer) -> None:
    writer.delete_state(PROGRAM_STATE, "count-ingress.worker-1")
    (patch, p_args, p_kwargs), (delete, d_args, _) = writer.custom.calls  # type: ignore[attr-defined]
    assert (patch, delete) == ("patch", "delete")
    assert p_args[:4] == ("bpfshare.io", "v1alpha1", "bpfprogramstates", "count-ingress.worker-1")
    assert p_args[4] == [
        {"op": "test", "path": "/metadata/finalizers", "value": [AGENT_FINALIZER]},
        {"op": "remove", "path": "/metadata/finalizers"},
    ]
    assert p_kwargs == {"_content_type": JSON_PATCH}
    assert d_args == ("bpfshare.io", "v1alpha1", "bpfprogramstates", "count-ingress.worker-1")
    assert writer.requests == 2


def test_only_the_agents_finalizer_is_removed_when_there_are_others(writer: Writer) -> None:
    writer.custom.failures["patch"] = api_error(422, "the test operation failed")  # type: ignore[attr-defined]
    writer.custom.results["get"] = {"metadata": {"finalizers": ["example.com/keep", AGENT_FINALIZER]}}  # type: ignore[attr-defined]
    writer.delete_state(MAP_STATE, "m.worker-1")
    names = [call[0] for call in writer.custom.calls]  # type: ignore[attr-defined]
    assert names == ["patch", "get", "patch", "delete"]
    exact = writer.custom.calls[2][1][4]  # type: ignore[attr-defined]
    assert exact == [
        {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/keep", AGENT_FINALIZER]},
        {"op": "replace", "path": "/metadata/finalizers", "value": ["example.com/keep"]},
    ]


def test_a_state_without_the_finalizer_is_just_deleted(writer: Writer) -> None:
    writer.custom.failures["patch"] = api_error(422, "the test operation failed")  # type: ignore[attr-defined]
    writer.custom.results["get"] = {"metadata": {}}  # type: ignore[attr-defined]
    writer.delete_state(MAP_STATE, "m.worker-1")
    assert [call[0] for call in writer.custom.calls] == ["patch", "get", "delete"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("gone_at", ["patch", "delete"])
def test_a_state_already_gone_is_no_error(writer: Writer, gone_at: str) -> None:
    writer.custom.failures[gone_at] = api_error(404, "not found")  # type: ignore[attr-defined]
    writer.delete_state(MAP_STATE, "m.worker-1")
    names = [call[0] for call in writer.custom.calls]  # type: ignore[attr-defined]
    assert names == (["patch"] if gone_at == "patch" else ["patch", "delete"])


def test_the_nodes_states_are_selected_by_the_api_server(writer: Writer) -> None:
    writer.custom.results["list"] = {"items": [{"metadata": {"name": "m.worker-1"}}]}  # type: ignore[attr-defined]
    assert writer.list_states(PROGRAM_STATE) == [{"metadata": {"name": "m.worker-1"}}]
    name, args, kwargs = only_call(writer.custom)
    assert (name, args, kwargs) == (
        "list",
        ("bpfshare.io", "v1alpha1", "bpfprogramstates"),
        {"field_selector": "spec.node=worker-1"},
    )


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            api_error(422, 'BpfMapState.bpfshare.io "m.worker-1" is invalid: status.phase: Unsupported value'),
            'BpfMapState m.worker-1: API server refused the write (422): BpfMapState.bpfshare.io "m.worker-1" '
            "is invalid: status.phase: Unsupported value",
        ),
        (
            api_error(403, None, reason="Forbidden"),
            "BpfMapState m.worker-1: API server refused the write (403): Forbidden",
        ),
        (
            ApiException(status=500, reason="Internal Server Error", body="<html>not json</html>"),
            "BpfMapState m.worker-1: API server refused the write (500): Internal Server Error",
        ),
    ],
)
def test_api_errors_name_the_state_and_the_servers_message(writer: Writer, error: ApiException, words: str) -> None:
    writer.custom.fail = error  # type: ignore[attr-defined]
    body: dict[str, Any] = state_body(MAP_STATE, "m", "u-1", "worker-1", STATUS)  # type: ignore[assignment]
    with pytest.raises(BpfshareError) as info:
        writer.apply_state(MAP_STATE, body)
    assert str(info.value) == words
    with pytest.raises(BpfshareError) as info:
        writer.delete_state(MAP_STATE, "m.worker-1")
    assert str(info.value) == words


def test_events_name_the_object_and_this_node_and_are_bounded(writer: Writer) -> None:
    body = {"metadata": {"name": "count-ingress", "uid": "u-1"}}
    writer.post_event(body, "BpfProgram", "Warning", "LoadFailed", "x" * 5000)
    name, (namespace, event), _ = only_call(writer.core)
    assert (name, namespace) == ("event", "default")  # events of cluster-scoped objects
    assert event.involved_object.kind == "BpfProgram" and event.involved_object.name == "count-ingress"
    assert event.involved_object.uid == "u-1" and event.involved_object.api_version == "bpfshare.io/v1alpha1"
    assert (event.type, event.reason, len(event.message)) == ("Warning", "LoadFailed", 1024)
    assert event.source.host == "worker-1" and event.reporting_instance == "worker-1"
    assert event.metadata.generate_name == "count-ingress."


def test_a_refused_event_does_not_fail_the_pass(writer: Writer, caplog: pytest.LogCaptureFixture) -> None:
    writer.core.fail = api_error(403, None, reason="Forbidden")  # type: ignore[attr-defined]
    writer.post_event({"metadata": {"name": "m"}}, "BpfMap", "Normal", "Pinned", "ok")
    assert "cannot post event Pinned on BpfMap m: Forbidden" in caplog.text


def config_map(binary: dict[str, bytes] | None = None, data: dict[str, str] | None = None) -> Any:
    encoded = {k: base64.b64encode(v).decode() for k, v in (binary or {}).items()}
    return SimpleNamespace(binary_data=encoded or None, data=data)


def test_bytecode_is_read_from_binary_data(writer: Writer) -> None:
    writer.core.config_map = config_map({"x.o": b"\x7fELF\x02\x01"})  # type: ignore[attr-defined]
    assert writer.read_config_map("ns", "objs", "x.o") == b"\x7fELF\x02\x01"
    assert only_call(writer.core)[1] == ("objs", "ns")


@pytest.mark.parametrize(
    ("cm", "error", "words"),
    [
        (config_map(data={"x.o": "text"}), None, "key x.o is in data, not binaryData (an ELF object is binary)"),
        (config_map({"other.o": b"x"}), None, "no key x.o in binaryData"),
        (config_map(), None, "no key x.o in binaryData"),
        (None, api_error(404, "not found", reason="Not Found"), "404 Not Found"),
    ],
)
def test_config_map_errors_name_the_reference(writer: Writer, cm: Any, error: Any, words: str) -> None:
    writer.core.config_map = cm  # type: ignore[attr-defined]
    writer.core.fail = error  # type: ignore[attr-defined]
    with pytest.raises(BpfshareError) as info:
        writer.read_config_map("ns", "objs", "x.o")
    assert str(info.value) == f"spec.bytecode.configMap ns/objs: {words}"
