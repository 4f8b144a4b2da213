"""Attach targets: where a program runs (tc, tcx, cgroup), as pure data (no kernel).

Shared by the API types (a BpfProgram's ``spec.attach``), the CLI (``--attach SPEC``) and the
loader, which turns a target into a live attachment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bpfshare.errors import BpfshareError
from bpfshare.types import CGROUP_ATTACH_TYPES, AttachType, Direction


@dataclass(frozen=True)
class TcTarget:
    interface: str
    direction: Direction
    netns: str | None = None
    priority: int = 1
    handle: int = 1
    kind: Literal["tc"] = "tc"
    pod: str | None = field(default=None, compare=False)  # namespace/name, for a target of attach.tc.pods

    @property
    def key(self) -> str:
        return f"tc:{self.interface}:{self.direction}" + (f"@{self.netns}" if self.netns else "")


@dataclass(frozen=True)
class TcxTarget:
    interface: str
    direction: Direction
    netns: str | None = None
    kind: Literal["tcx"] = "tcx"
    pod: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"tcx:{self.interface}:{self.direction}" + (f"@{self.netns}" if self.netns else "")

    @property
    def attach_type(self) -> AttachType:
        return AttachType.TcxIngress if self.direction == "ingress" else AttachType.TcxEgress


@dataclass(frozen=True)
class CgroupTarget:
    path: str  # relative to the cgroup v2 root
    type: str  # a key of CGROUP_ATTACH_TYPES
    kind: Literal["cgroup"] = "cgroup"
    pod: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"cgroup:{self.path}:{self.type}"

    @property
    def attach_type(self) -> AttachType:
        return CGROUP_ATTACH_TYPES[self.type]


AttachTarget = TcTarget | TcxTarget | CgroupTarget


def _direction(text: str, spec: str) -> Direction:
    if text not in ("ingress", "egress"):
        raise BpfshareError(f"attach {spec!r}: direction must be ingress or egress, not {text!r}")
    return text  # type: ignore[return-value]


def parse_attach(spec: str) -> AttachTarget:
    """Parse the CLI's ``tc:IFACE:ingress|egress[@NETNS]``, ``tcx:...`` or ``cgroup:DIR:TYPE``."""
    kind, _, rest = spec.partition(":")
    if kind in ("tc", "tcx"):
        where, _, netns = rest.partition("@")
        iface, _, direction = where.rpartition(":")
        if not iface or not direction:
            raise BpfshareError(f"attach {spec!r}: expected {kind}:IFACE:ingress|egress[@NETNS]")
        if kind == "tc":
            return TcTarget(iface, _direction(direction, spec), netns or None)
        return TcxTarget(iface, _direction(direction, spec), netns or None)
    if kind == "cgroup":
        path, _, type_ = rest.rpartition(":")
        if not path or not type_:
            raise BpfshareError(f"attach {spec!r}: expected cgroup:DIR:TYPE")
        if type_ not in CGROUP_ATTACH_TYPES:
            raise BpfshareError(
                f"attach {spec!r}: unknown cgroup attach type {type_!r} (one of {', '.join(CGROUP_ATTACH_TYPES)})"
            )
        return CgroupTarget(path, type_)
    raise BpfshareError(f"attach {spec!r}: kind must be tc, tcx or cgroup")
