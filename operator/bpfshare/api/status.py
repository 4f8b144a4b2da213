"""A resource's status on one node, typed, and the events an engine pass produced.

The engine fills typed values (``MapStatus``, ``ProgramStatus``); only ``to_dict`` knows the
camelCase field names that the API and ``kubectl`` show, so no layer reads back string keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Phase(enum.StrEnum):
    Pending = "Pending"
    Ready = "Ready"
    Error = "Error"


@dataclass(frozen=True)
class MapStatus:
    pin_path: str
    map_id: int | None = None  # None while a deletion waits for the map's users
    used_by: tuple[str, ...] = ()  # BpfPrograms on this node bound to the map
    adopted_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.map_id is not None:
            out["mapId"] = self.map_id
        out["pinPath"] = self.pin_path
        if self.adopted_from is not None:
            out["adoptedFrom"] = self.adopted_from
        out["usedBy"] = list(self.used_by)
        return out


@dataclass(frozen=True)
class AttachmentStatus:
    target: str  # the target's key, e.g. tc:eth0:ingress@ns1
    link_id: int | None = None  # tcx and cgroup: the pinned link
    pin_path: str | None = None
    handle: str | None = None  # tc: "priority:handle"
    pod: str | None = None  # namespace/name, for a target of attach.*.pods

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target}
        if self.pod is not None:
            out["pod"] = self.pod
        if self.link_id is not None:
            out["linkId"] = self.link_id
        if self.pin_path is not None:
            out["pinPath"] = self.pin_path
        if self.handle is not None:
            out["handle"] = self.handle
        return out


@dataclass(frozen=True)
class ProgramStatus:
    program_id: int
    tag: str
    maps: dict[str, int] = field(default_factory=dict)  # object map name -> map ID
    attachments: tuple[AttachmentStatus, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "programId": self.program_id,
            "tag": self.tag,
            "maps": dict(self.maps),
            "attachments": [a.to_dict() for a in self.attachments],
        }


@dataclass
class StatusEntry:
    phase: Phase
    message: str = ""
    map: MapStatus | None = None
    program: ProgramStatus | None = None

    @property
    def pin_path(self) -> str | None:
        return self.map.pin_path if self.map is not None else None

    @property
    def map_id(self) -> int | None:
        return self.map.map_id if self.map is not None else None

    @property
    def program_id(self) -> int | None:
        return self.program.program_id if self.program is not None else None

    def to_dict(self, node: str, generation: int) -> dict[str, Any]:
        """The node's status entry as the API shows it."""
        out: dict[str, Any] = {
            "node": node,
            "phase": str(self.phase),
            "message": self.message,
            "observedGeneration": generation,
        }
        if self.map is not None:
            out.update(self.map.to_dict())
        if self.program is not None:
            out.update(self.program.to_dict())
        return out


@dataclass(frozen=True)
class Event:
    kind: str  # BpfMap or BpfProgram
    name: str
    type: str  # Normal or Warning
    reason: str
    message: str
