"""The pods of this node as the agent knows them: from its pod watch (podwatch.py) the pods, their
labels and phases; from the container runtime (cri/) where each running one is, its network namespace
and cgroup. Programs with ``attach.*.pods`` ask it for the running pods a selector picks.

A pod is a target once it is Running and not being deleted. Its place is asked of the runtime once
per pod and sandbox and kept: a pod whose sandbox was replaced (a new pod IP or network namespace)
is asked again, and a pod that goes, or leaves Running, is forgotten.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bpfshare.api.resources import NodeSelector
from bpfshare.cri.pods import PodPlace
from bpfshare.errors import BpfshareError

log = logging.getLogger("bpfshare.agent")

Locate = Callable[[str], PodPlace | None]  # pod UID -> its place, from the runtime (CriClient.place_of_pod)


@dataclass(frozen=True)
class Pod:
    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    running: bool = False  # phase Running and no deletionTimestamp
    sandbox: str = ""  # what changes when the runtime makes a new sandbox for the pod (its IPs)

    @property
    def selectable(self) -> tuple[bool, tuple[tuple[str, str], ...], str]:
        """What a program's selection of the pod depends on."""
        return self.running, tuple(sorted(self.labels.items())), self.sandbox

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_body(cls, body: Mapping[str, object]) -> Pod:
        raw_meta, raw_status = body.get("metadata"), body.get("status")
        meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
        status: Mapping[str, Any] = raw_status if isinstance(raw_status, Mapping) else {}
        ips = ",".join(str(i.get("ip")) for i in status.get("podIPs") or [] if isinstance(i, Mapping))
        return cls(
            uid=str(meta.get("uid") or ""),
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
            labels=dict(meta.get("labels") or {}),
            running=status.get("phase") == "Running" and not meta.get("deletionTimestamp"),
            sandbox=ips,
        )


@dataclass(frozen=True)
class PlacedPod:
    pod: Pod
    place: PodPlace


class PodInventory:
    """Thread-safe: the watch thread delivers, the reconcile loop asks."""

    def __init__(self, locate: Locate) -> None:
        self.locate = locate
        self._pods: dict[str, Pod] = {}
        self._places: dict[str, tuple[str, PodPlace]] = {}  # uid -> (sandbox, place)
        self._lock = threading.Lock()

    def on_pod(self, event_type: str | None, body: Mapping[str, object]) -> bool:
        """Take one event of the pod watch; whether what programs could select changed."""
        pod = Pod.from_body(body)
        if not pod.uid:
            return False
        with self._lock:
            before = self._pods.get(pod.uid)
            if event_type == "DELETED":
                self._pods.pop(pod.uid, None)
                self._places.pop(pod.uid, None)
                return before is not None and before.running
            self._pods[pod.uid] = pod
            if not pod.running or (before is not None and before.sandbox != pod.sandbox):
                self._places.pop(pod.uid, None)  # a new sandbox (or none): its place is asked again
            return before is None or before.selectable != pod.selectable

    def pods(self) -> list[Pod]:
        with self._lock:
            return sorted(self._pods.values(), key=lambda p: (p.namespace, p.name))

    def selected(self, namespace: str, selector: NodeSelector) -> list[Pod]:
        """The running pods of ``namespace`` whose labels ``selector`` matches, by name."""
        return [p for p in self.pods() if p.running and p.namespace == namespace and selector.matches(p.labels)]

    def place(self, pod: Pod) -> PodPlace | None:
        """Where the running pod is, from the runtime (asked once per sandbox); None if the runtime has
        no ready sandbox for it (yet). A runtime that cannot be asked raises, naming the pod."""
        with self._lock:
            cached = self._places.get(pod.uid)
        if cached is not None and cached[0] == pod.sandbox:
            return cached[1]
        try:
            place = self.locate(pod.uid)
        except BpfshareError as exc:
            raise BpfshareError(f"pod {pod.ref}: {exc}") from None
        if place is not None:
            with self._lock:
                if pod.uid in self._pods:  # not deleted meanwhile
                    self._places[pod.uid] = (pod.sandbox, place)
        return place

    def placed(self, namespace: str, selector: NodeSelector) -> tuple[list[PlacedPod], list[str], list[str]]:
        """The selected running pods with their places; one message per pod the runtime has no ready
        sandbox for yet; one per pod the runtime could not be asked about (an error)."""
        found: list[PlacedPod] = []
        waiting: list[str] = []
        failed: list[str] = []
        for pod in self.selected(namespace, selector):
            try:
                place = self.place(pod)
            except BpfshareError as exc:
                failed.append(str(exc))
                continue
            if place is None:
                waiting.append(f"pod {pod.ref}: the container runtime has no ready sandbox for it yet")
            else:
                found.append(PlacedPod(pod, place))
        return found, waiting, failed
