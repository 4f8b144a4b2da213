"""A resource's status entry for one node, and the events an engine run produced."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Phase(enum.StrEnum):
    Pending = "Pending"
    Ready = "Ready"
    Error = "Error"


@dataclass
class StatusEntry:
    phase: Phase
    message: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, node: str, generation: int) -> dict[str, Any]:
        """The ``status.nodes[]`` element, keyed by ``node``."""
        return {
            "node": node,
            "phase": str(self.phase),
            "message": self.message,
            "observedGeneration": generation,
            **self.fields,
        }


@dataclass(frozen=True)
class Event:
    kind: str  # BpfMap or BpfProgram
    name: str
    type: str  # Normal or Warning
    reason: str
    message: str
