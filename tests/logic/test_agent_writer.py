"""What the agent writes to the API server (agent/writer.py), with the Kubernetes client's API objects
replaced by recorders: the per-node names the API server must accept (finalizers are qualified names,
field managers at most 128 characters), the server-side-apply bodies (this node's entry and its keys in
the summary maps only), and what becomes of API errors."""

from __future__ import annotations

import base64
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from bpfshare.agent.writer import APPLY, Writer, field_manager, finalizer_name
from bpfshare.errors import BpfshareError

# Kubernetes' qualified name (apimachinery validation.IsQualifiedName): [prefix/]name, name <= 63.
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL = st.builds(
    lambda first, middle, last: first + middle + last if middle or last else first,
    st.sampled_from("abcxyz019"),
    st.text("abz09-", max_size=20),
    st.sampled_from(["", "a", "7"]),
).filter(lambda label: not label.endswith("-"))
# DNS-1123 subdomains, as Kubernetes node names are: dot-separated labels, at most 253 characters.
NODE_NAMES = st.lists(LABEL, min_size=1, max_size=12).map(".".join).filter(lambda n: len(n) <= 253)


def assert_valid_finalizer(finalizer: str) -> None:
    prefix, _, name = finalizer.partition("/")
    assert prefix == "bpfshare.io"
    assert 1 <= len(name) <= 63 and QUALIFIED_NAME.match(name), finalizer


@pytest.mark.parametrize(
    ("node", "finalizer"),
    [
        ("worker-1", "bpfshare.io/node-worker-1"),
        ("ip-10-0-3-7.eu-west-1.compute.internal", "bpfshare.io/node-ip-10-0-3-7.eu-west-1.compute.internal"),
        ("a" * 58, "bpfshare.io/node-" + "a" * 58),  # exactly 63: kept readable, not hashed
    ],
)
def test_short_node_names_are_kept_readable(node: str, finalizer: str) -> None:
    assert finalizer_name(node) == finalizer
    assert_valid_finalizer(finalizer)


def test_a_name_one_longer_is_shortened_with_a_digest() -> None:
    name = finalizer_name("a" * 59).split("/", 1)[1]
    assert len(name) == 63 and name.startswith("node-aaaa") and re.search(r"-[0-9a-f]{10}$", name)


@pytest.mark.parametrize("node", ["Worker_1", "UPPER", "..", "-x-", "node with spaces", "ü"])
def test_names_that_are_no_node_names_still_make_valid_finalizers(node: str) -> None:
    """`bpfshare apply` uses the hostname, which need not be a valid Kubernetes name."""
    assert_valid_finalizer(finalizer_name(node))
    assert len(field_manager(node)) <= 128


@settings(max_examples=100, deadline=None, database=None)
@given(node=NODE_NAMES)
def test_every_node_name_makes_a_valid_finalizer_and_field_manager(node: str) -> None:
    assert_valid_finalizer(finalizer_name(node))
    assert finalizer_name(node) == finalizer_name(node)
    manager = field_manager(node)
    assert len(manager) <= 128 and manager.startswith("bpfshare-agent-")
    if len(node) <= 128 - len("bpfshare-agent-"):
        assert manager == f"bpfshare-agent-{node}"


@settings(max_examples=100, deadline=None, database=None)
@given(a=NODE_NAMES, b=NODE_NAMES)
def test_different_nodes_never_share_a_finalizer_or_a_field_manager(a: str, b: str) -> None:
    """Each agent removes only its own finalizer and applies only its own fields: a shared one would
    let one node release a resource another still holds."""
    if a != b:
        assert finalizer_name(a) != finalizer_name(b)
        assert field_manager(a) != field_manager(b)


def test_long_names_with_a_common_prefix_stay_apart() -> None:
    base = "node-pool-" + "x" * 240
    names = {finalizer_name(base + suffix) for suffix in ("a", "b", "c")}
    managers = {field_manager(base + suffix) for suffix in ("a", "b", "c")}
    assert len(names) == 3 and len(managers) == 3


# -- the writes --------------------------------------------------------------------------------------


class Recorder:
    """Stands in for CustomObjectsApi and CoreV1Api: records calls, raises what ``fail`` holds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail: ApiException | None = None
        self.config_map: Any = None

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args, kwargs))
        if self.fail is not None:
            raise self.fail
        return self.config_map

    def patch_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("patch", *args, **kwargs)

    def patch_cluster_custom_object_status(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("patch_status", *args, **kwargs)

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


def test_status_is_this_nodes_entry_and_its_summary_keys(writer: Writer) -> None:
    entry = {"node": "worker-1", "phase": "Ready", "mapId": 42, "pinPath": "/sys/fs/bpf/bpfshare/maps/m"}
    writer.set_status("BpfMap", "flow-counts", entry)
    name, args, kwargs = only_call(writer.custom)
    assert name == "patch_status"
    assert args[:4] == ("bpfshare.io", "v1alpha1", "bpfmaps", "flow-counts")
    assert args[4] == {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfMap",
        "metadata": {"name": "flow-counts"},
        "status": {"nodes": [entry], "phases": {"worker-1": "Ready"}, "mapIds": {"worker-1": 42}},
    }
    # Server-side apply as this node's manager, taking over fields a previous agent of this node owned.
    assert kwargs == {"field_manager": "bpfshare-agent-worker-1", "force": True, "_content_type": APPLY}
    assert writer.requests == 1


def test_program_status_uses_program_ids_and_shared_fields(writer: Writer) -> None:
    entry = {"node": "worker-1", "phase": "Error", "message": "verifier says no"}
    writer.set_status("BpfProgram", "count-ingress", entry, shared={"attach": "tc/ingress eth0"})
    _, args, _ = only_call(writer.custom)
    assert args[2] == "bpfprograms"
    assert args[4]["status"] == {
        "nodes": [entry],
        "phases": {"worker-1": "Error"},
        "programIds": {},  # no ID yet: this node's key is dropped, not set to null
        "attach": "tc/ingress eth0",
    }


def test_withdrawing_applies_an_empty_entry_and_no_shared_fields(writer: Writer) -> None:
    """Applying nothing for the fields this manager owned removes them; other nodes' entries stay."""
    writer.set_status("BpfProgram", "count-ingress", None, shared={"attach": "tc/ingress eth0"})
    _, args, _ = only_call(writer.custom)
    assert args[4]["status"] == {"nodes": [], "phases": {}, "programIds": {}}


def test_finalizer_added_and_removed_by_apply(writer: Writer) -> None:
    writer.set_finalizer("BpfProgram", "count-ingress", present=True)
    writer.set_finalizer("BpfProgram", "count-ingress", present=False)
    (first, added, options), (second, removed, _) = writer.custom.calls  # type: ignore[attr-defined]
    assert first == second == "patch"  # the object, not /status
    assert added[4]["metadata"] == {"name": "count-ingress", "finalizers": ["bpfshare.io/node-worker-1"]}
    assert removed[4]["metadata"] == {"name": "count-ingress"}  # owned no more: the server drops it
    assert options["field_manager"] == "bpfshare-agent-worker-1"
    assert writer.requests == 2


def test_a_resource_deleted_meanwhile_is_not_an_error(writer: Writer) -> None:
    writer.custom.fail = api_error(404, "not found")  # type: ignore[attr-defined]
    writer.set_status("BpfMap", "gone", {"node": "worker-1", "phase": "Ready"})
    writer.set_finalizer("BpfMap", "gone", present=False)
    assert writer.requests == 2


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            api_error(422, 'BpfMap.bpfshare.io "m" is invalid: status.nodes[0].phase: Unsupported value'),
            'BpfMap m: API server refused the write (422): BpfMap.bpfshare.io "m" is invalid: status.nodes[0].phase: '
            "Unsupported value",
        ),
        (api_error(403, None, reason="Forbidden"), "BpfMap m: API server refused the write (403): Forbidden"),
        (
            ApiException(status=500, reason="Internal Server Error", body="<html>not json</html>"),
            "BpfMap m: API server refused the write (500): Internal Server Error",
        ),
    ],
)
def test_other_api_errors_name_the_resource_and_the_servers_message(
    writer: Writer, error: ApiException, words: str
) -> None:
    writer.custom.fail = error  # type: ignore[attr-defined]
    with pytest.raises(BpfshareError) as info:
        writer.set_status("BpfMap", "m", {"node": "worker-1", "phase": "Ready"})
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
