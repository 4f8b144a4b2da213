"""A CRI client over the runtime's unix socket (gRPC, as the kubelet calls it), for the two questions
bpfshare asks: which pod sandboxes run here, and where is one pod's network namespace and cgroup.

grpcio is imported when a client is made: commands that never meet a runtime do not load it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bpfshare.cri import messages
from bpfshare.cri.messages import Sandbox
from bpfshare.cri.pods import PodPlace, place_of
from bpfshare.cri.wire import WireError
from bpfshare.errors import BpfshareError

SERVICE = "/runtime.v1.RuntimeService"
POD_UID_LABEL = "io.kubernetes.pod.uid"  # the kubelet labels every sandbox with its pod's UID
# Where runtimes put their CRI socket, in the order the kubelet's docs list them.
DEFAULT_SOCKETS = (
    Path("/run/containerd/containerd.sock"),
    Path("/run/crio/crio.sock"),
    Path("/run/cri-dockerd.sock"),
)


T = TypeVar("T")


def _raw(data: bytes) -> bytes:
    return data  # bytes in, bytes out: messages.py encodes and decodes


class CriError(BpfshareError):
    """The runtime could not be asked, or its answer could not be read: names the socket and the call."""


def find_socket(candidates: tuple[Path, ...] = DEFAULT_SOCKETS) -> Path:
    for path in candidates:
        try:
            if path.is_socket():
                return path
        except OSError:  # a directory we may not search (an unprivileged agent): not ours to use
            continue
    raise CriError(f"no container runtime socket at {', '.join(map(str, candidates))}; give --runtime-endpoint")


class CriClient:
    """One gRPC channel to the runtime; every call has a deadline (``timeout`` seconds)."""

    def __init__(self, socket: Path | str, *, timeout: float = 2.0) -> None:
        import grpc

        self.socket = str(socket).removeprefix("unix://")
        self.timeout = timeout
        self._grpc = grpc
        self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: bytes) -> bytes:
        call = self._calls.get(method)
        if call is None:
            call = self._channel.unary_unary(f"{SERVICE}/{method}", request_serializer=_raw, response_deserializer=_raw)
            self._calls[method] = call
        try:
            response = call(request, timeout=self.timeout)
        except self._grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise CriError(f"container runtime at {self.socket}: {method}: {code}: {details}") from None
        return bytes(response)

    def version(self) -> str:
        """``runtime_name runtime_version``, e.g. ``containerd 1.6.20~ds1``."""
        return self._decode("Version", messages.version_response, self._call("Version", messages.version_request()))

    def sandboxes(self, labels: dict[str, str] | None = None, *, ready_only: bool = True) -> list[Sandbox]:
        data = self._call("ListPodSandbox", messages.list_request(labels, ready_only=ready_only))
        return self._decode("ListPodSandbox", messages.list_response, data)

    def place(self, sandbox_id: str) -> PodPlace:
        """Where the pod of one sandbox is (its network namespace, its cgroup)."""
        data = self._call("PodSandboxStatus", messages.status_request(sandbox_id))
        sandbox, info = self._decode("PodSandboxStatus", messages.status_response, data)
        return place_of(sandbox, info)

    def place_of_pod(self, uid: str) -> PodPlace | None:
        """The place of the pod with this UID from its ready sandbox (the newest, should a restarted pod
        have an old one still listed); None when no ready sandbox has it (not started yet, or gone)."""
        found = self.sandboxes({POD_UID_LABEL: uid})
        found = [s for s in found if s.metadata.uid == uid or s.labels.get(POD_UID_LABEL) == uid]
        if not found:
            return None
        newest = max(found, key=lambda s: (s.metadata.attempt, s.created_at))
        return self.place(newest.id)

    def _decode(self, method: str, decode: Callable[[bytes], T], data: bytes) -> T:
        try:
            return decode(data)
        except (WireError, UnicodeDecodeError) as exc:
            raise CriError(f"container runtime at {self.socket}: {method}: unreadable answer: {exc}") from None
