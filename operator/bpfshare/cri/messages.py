"""The CRI messages bpfshare sends and reads, by the field numbers of k8s.io/cri-api
``pkg/apis/runtime/v1/api.proto`` (v0.34): ``ListPodSandbox`` and ``PodSandboxStatus`` of
``runtime.v1.RuntimeService``, and ``Version`` to name the runtime in errors."""

from __future__ import annotations

from dataclasses import dataclass, field

from bpfshare.cri.wire import as_bytes, as_int, field_bytes, field_map, field_string, field_varint, fields, map_entry

SANDBOX_READY, SANDBOX_NOTREADY = 0, 1  # enum PodSandboxState


@dataclass(frozen=True)
class SandboxMetadata:
    """PodSandboxMetadata: the pod the sandbox is for."""

    name: str = ""  # 1
    uid: str = ""  # 2
    namespace: str = ""  # 3
    attempt: int = 0  # 4


@dataclass(frozen=True)
class Sandbox:
    """PodSandbox (ListPodSandboxResponse.items) or the same fields of PodSandboxStatus."""

    id: str = ""  # 1
    metadata: SandboxMetadata = field(default_factory=SandboxMetadata)  # 2
    state: int = SANDBOX_READY  # 3
    created_at: int = 0  # 4, nanoseconds
    labels: dict[str, str] = field(default_factory=dict)  # 5 (PodSandbox); 7 in PodSandboxStatus

    @property
    def ready(self) -> bool:
        return self.state == SANDBOX_READY


def version_request() -> bytes:
    return field_string(1, "v1")  # VersionRequest.version: the kubelet's API version


def version_response(data: bytes) -> str:
    """``runtime_name runtime_version`` (fields 2 and 3 of VersionResponse)."""
    parts = {f.number: as_bytes(f).decode() for f in fields(data) if f.number in (2, 3)}
    return f"{parts.get(2, '?')} {parts.get(3, '?')}"


def list_request(labels: dict[str, str] | None = None, *, ready_only: bool = True) -> bytes:
    """ListPodSandboxRequest{filter: PodSandboxFilter{state (2), label_selector (3)}}.

    SANDBOX_READY is 0, so its PodSandboxStateValue is an empty message: present, and so a filter."""
    selector = field_bytes(2, b"") if ready_only else b""
    selector += field_map(3, labels or {})
    return field_bytes(1, selector) if selector else b""


def _metadata(data: bytes) -> SandboxMetadata:
    text = {1: "", 2: "", 3: ""}
    attempt = 0
    for f in fields(data):
        if f.number in text:
            text[f.number] = as_bytes(f).decode()
        elif f.number == 4:
            attempt = as_int(f)
    return SandboxMetadata(name=text[1], uid=text[2], namespace=text[3], attempt=attempt)


def _sandbox(data: bytes, labels_field: int) -> Sandbox:
    id_, meta, state, created = "", SandboxMetadata(), SANDBOX_READY, 0
    labels: dict[str, str] = {}
    for f in fields(data):
        if f.number == 1:
            id_ = as_bytes(f).decode()
        elif f.number == 2:
            meta = _metadata(as_bytes(f))
        elif f.number == 3:
            state = as_int(f)
        elif f.number == 4:
            created = as_int(f)
        elif f.number == labels_field:
            k, v = map_entry(as_bytes(f))
            labels[k] = v
    return Sandbox(id=id_, metadata=meta, state=state, created_at=created, labels=labels)


def list_response(data: bytes) -> list[Sandbox]:
    """ListPodSandboxResponse.items (1), each a PodSandbox (labels: field 5)."""
    return [_sandbox(as_bytes(f), labels_field=5) for f in fields(data) if f.number == 1]


def status_request(sandbox_id: str, *, verbose: bool = True) -> bytes:
    """PodSandboxStatusRequest; ``verbose`` asks for ``info``, where the runtime spec is."""
    return field_string(1, sandbox_id) + field_varint(2, int(verbose))


def status_response(data: bytes) -> tuple[Sandbox, dict[str, str]]:
    """PodSandboxStatusResponse: (status (1), a PodSandboxStatus whose labels are field 7; info (2))."""
    sandbox, info = Sandbox(), {}
    for f in fields(data):
        if f.number == 1:
            sandbox = _sandbox(as_bytes(f), labels_field=7)
        elif f.number == 2:
            k, v = map_entry(as_bytes(f))
            info[k] = v
    return sandbox, info
