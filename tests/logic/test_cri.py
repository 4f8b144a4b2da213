"""The CRI messages bpfshare reads and writes (cri/wire.py, cri/messages.py) and where a pod is, from its
sandbox's runtime spec (cri/pods.py): pure, no runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfshare.cri import messages
from bpfshare.cri.client import CriClient, CriError
from bpfshare.cri.messages import Sandbox, SandboxMetadata
from bpfshare.cri.pods import expand_slice, place_of, pod_cgroup
from bpfshare.cri.wire import (
    I32,
    I64,
    WireError,
    field_bytes,
    field_map,
    field_string,
    field_varint,
    fields,
    key,
    varint,
)
from bpfshare.errors import BpfshareError

UID = "0b0f6d3c-5a0e-4bde-9d5c-2f5f2a6c9e11"


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_varints_round_trip(value: int) -> None:
    (f,) = fields(key(1, 0) + varint(value))
    assert f.value == value


def test_negative_numbers_are_ten_byte_varints() -> None:
    assert len(varint(-1)) == 10
    (f,) = fields(key(4, 0) + varint(-1))
    assert f.value == (1 << 64) - 1


def metadata(name: str = "web-0", uid: str = UID, namespace: str = "shop", attempt: int = 0) -> bytes:
    return field_string(1, name) + field_string(2, uid) + field_string(3, namespace) + field_varint(4, attempt)


def pod_sandbox(sandbox_id: str, *, state: int = 0, attempt: int = 0, created: int = 1, extra: bytes = b"") -> bytes:
    """A PodSandbox as a runtime sends it (fields in any order; unknown ones included via ``extra``)."""
    return (
        field_map(5, {"io.kubernetes.pod.uid": UID, "app": "web"})
        + field_string(1, sandbox_id)
        + field_bytes(2, metadata(attempt=attempt))
        + field_varint(3, state)
        + field_varint(4, created)
        + extra
    )


def test_list_response_reads_every_sandbox_and_skips_fields_it_does_not_know() -> None:
    unknown = field_string(7, "runc") + key(9, I64) + bytes(8) + key(10, I32) + bytes(4) + field_bytes(99, b"\x01")
    data = field_bytes(1, pod_sandbox("a" * 64, extra=unknown)) + field_bytes(1, pod_sandbox("b" * 64, state=1))
    first, second = messages.list_response(data)
    assert first == Sandbox(
        id="a" * 64,
        metadata=SandboxMetadata(name="web-0", uid=UID, namespace="shop"),
        state=0,
        created_at=1,
        labels={"io.kubernetes.pod.uid": UID, "app": "web"},
    )
    assert first.ready and not second.ready


def test_list_request_filters_ready_sandboxes_by_label() -> None:
    (filter_,) = fields(messages.list_request({"io.kubernetes.pod.uid": UID}))
    assert filter_.number == 1
    inner = list(fields(filter_.value))  # type: ignore[arg-type]
    # SANDBOX_READY is 0: the state filter is an empty, but present, PodSandboxStateValue.
    assert (inner[0].number, inner[0].value) == (2, b"")
    assert inner[1].number == 3 and UID.encode() in inner[1].value  # type: ignore[operator]
    assert messages.list_request(ready_only=False) == b""


def test_truncated_or_malformed_answers_are_wire_errors() -> None:
    good = field_bytes(1, pod_sandbox("a" * 64))
    with pytest.raises(WireError, match="announced"):
        messages.list_response(good[:-3])
    with pytest.raises(WireError, match="truncated varint"):
        list(fields(b"\x08\x80"))
    with pytest.raises(WireError, match="wire type 3"):
        list(fields(key(1, 3)))
    with pytest.raises(WireError, match="expected a length-delimited"):
        messages.list_response(field_varint(1, 5))


def runtime_spec(netns: str | None, cgroups_path: str) -> dict[str, str]:
    namespaces = [{"type": "pid"}, {"type": "ipc"}] + ([{"type": "network", "path": netns}] if netns else [])
    spec = {"linux": {"namespaces": namespaces, "cgroupsPath": cgroups_path}}
    return {"info": json.dumps({"pid": 4242, "runtimeSpec": spec})}


def status(sandbox_id: str = "c" * 64) -> Sandbox:
    data = field_bytes(1, field_string(1, sandbox_id) + field_bytes(2, metadata()) + field_map(7, {"app": "web"}))
    data += field_map(2, runtime_spec("/var/run/netns/cni-1", f"/kubepods/besteffort/pod{UID}/{sandbox_id}"))
    sandbox, info = messages.status_response(data)
    assert sandbox.labels == {"app": "web"} and "info" in info
    return sandbox


def test_a_pods_place_from_containerds_cgroupfs_spec() -> None:
    sandbox = status()
    place = place_of(sandbox, runtime_spec("/var/run/netns/cni-1", f"/kubepods/besteffort/pod{UID}/{sandbox.id}"))
    assert (place.uid, place.namespace, place.name) == (UID, "shop", "web-0")
    assert place.netns == "/var/run/netns/cni-1"
    assert place.cgroup == f"kubepods/besteffort/pod{UID}"
    assert place.pid == 4242


def test_a_pods_cgroup_with_the_systemd_driver_is_its_slice() -> None:
    uid = UID.replace("-", "_")
    path = f"kubepods-besteffort-pod{uid}.slice:cri-containerd:{'d' * 64}"
    assert pod_cgroup(path) == (f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice")
    assert pod_cgroup(f"kubepods-pod{uid}.slice:crio:{'e' * 64}") == f"kubepods.slice/kubepods-pod{uid}.slice"
    assert expand_slice("-.slice") == ""
    for bad in ("kubepods", "a--b.slice", "-a.slice", "a/b.slice"):
        with pytest.raises(BpfshareError, match="not a systemd slice"):
            expand_slice(bad)


def test_a_host_network_pod_has_a_cgroup_but_no_namespace_of_its_own() -> None:
    place = place_of(status(), runtime_spec(None, f"/kubepods/pod{UID}/x"))
    assert place.netns == "" and place.cgroup == f"kubepods/pod{UID}"


def test_a_sandbox_without_a_runtime_spec_is_a_clear_error_naming_the_pod() -> None:
    with pytest.raises(BpfshareError, match=r"pod shop/web-0 .*no runtimeSpec"):
        place_of(status(), {"info": json.dumps({"pid": 1})})
    with pytest.raises(BpfshareError, match=r"pod shop/web-0 .*not JSON"):
        place_of(status(), {"info": "{"})
    with pytest.raises(BpfshareError, match="no cgroupsPath"):
        place_of(status(), runtime_spec("/var/run/netns/x", ""))


def test_an_unreachable_runtime_is_an_error_naming_its_socket(tmp_path: Path) -> None:
    socket = tmp_path / "no-runtime.sock"
    with CriClient(socket, timeout=1.0) as cri, pytest.raises(CriError, match=f"{socket}: ListPodSandbox: UNAVAILABLE"):
        cri.sandboxes()


def test_finding_the_runtime_skips_what_it_may_not_look_at(tmp_path: Path) -> None:
    """An unprivileged agent may not search /run/containerd (mode 0600): stat fails with EACCES, which
    Path.is_socket raises; here ENAMETOOLONG, which it raises too, whatever the test's privileges."""
    from bpfshare.cri.client import find_socket

    unreadable = tmp_path / ("x" * 300) / "containerd.sock"
    with pytest.raises(OSError):
        unreadable.is_socket()  # the failure find_socket must survive
    with pytest.raises(CriError, match="no container runtime socket"):
        find_socket((tmp_path / "missing.sock", unreadable))
