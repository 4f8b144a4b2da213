"""Attach targets (tc, tcx, cgroup) and the one way to attach a loaded program to them.

Links are pinned under the program's pin directory and re-adopted on the next run: a pinned link
whose target still exists is *updated* to the new program (BPF_LINK_UPDATE, no moment without a
program) rather than attached a second time. tc filters are replaced in place at their
priority/handle for the same reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, unquote

from bpfshare.errors import BpfshareError, KernelError
from bpfshare.loader import replace_pin
from bpfshare.spec import ProgramSpec
from bpfshare.types import CGROUP_ATTACH_TYPES, CGROUP_PROG_TYPE, AttachType, ProgType

if TYPE_CHECKING:
    from bpfshare.kernel.links import Link
    from bpfshare.kernel.programs import Program

Direction = Literal["ingress", "egress"]
LINKS_DIR = "links"
TC_PROG_TYPES = (ProgType.SchedCls, ProgType.SchedAct)


@dataclass(frozen=True)
class TcTarget:
    interface: str
    direction: Direction
    netns: str | None = None
    priority: int = 1
    handle: int = 1
    kind: Literal["tc"] = "tc"

    @property
    def key(self) -> str:
        return f"tc:{self.interface}:{self.direction}" + (f"@{self.netns}" if self.netns else "")


@dataclass(frozen=True)
class TcxTarget:
    interface: str
    direction: Direction
    netns: str | None = None
    kind: Literal["tcx"] = "tcx"

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

    @property
    def key(self) -> str:
        return f"cgroup:{self.path}:{self.type}"

    @property
    def attach_type(self) -> AttachType:
        return CGROUP_ATTACH_TYPES[self.type]


AttachTarget = TcTarget | TcxTarget | CgroupTarget


@dataclass(frozen=True)
class Attachment:
    target: AttachTarget
    link_id: int | None = None
    pin_path: Path | None = None
    handle: str | None = None  # tc: "prio:handle"

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"target": self.target.key}
        if self.link_id is not None:
            out["linkId"] = self.link_id
        if self.pin_path is not None:
            out["pinPath"] = str(self.pin_path)
        if self.handle is not None:
            out["handle"] = self.handle
        return out


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


def check_fits(program: ProgramSpec, target: AttachTarget) -> None:
    """Refuse a program type that cannot attach to the target, before asking the kernel."""
    where = f"program {program.name!r} (section {program.section!r}, type {program.type.name})"
    if target.kind in ("tc", "tcx"):
        if program.type not in TC_PROG_TYPES:
            raise BpfshareError(f"{where} cannot attach to {target.key}: {target.kind} needs a SchedCls program")
        return
    needed = CGROUP_PROG_TYPE[target.attach_type]
    if program.type is not needed:
        raise BpfshareError(
            f"{where} cannot attach to {target.key}: cgroup {target.type} needs a {needed.name} program"
        )
    expected = program.expected_attach_type
    if expected is not None and expected is not target.attach_type:
        raise BpfshareError(f"{where} was built for {expected.name}, not {target.attach_type.name} ({target.key})")


def link_pin_path(pin_dir: Path, target: AttachTarget) -> Path:
    """One pin per target; the name is the target's key, percent-encoded (reversible, and free of
    '/' and of '.', which bpffs refuses in names)."""
    return pin_dir / LINKS_DIR / quote(target.key, safe="@:-_").replace(".", "%2E")


def target_from_link_pin(name: str) -> AttachTarget:
    return parse_attach(unquote(name))


def attach_program(program: Program, spec: ProgramSpec, target: AttachTarget, pin_dir: Path) -> Attachment:
    """Attach (or re-attach in place) ``program`` to ``target``; idempotent."""
    check_fits(spec, target)
    if isinstance(target, TcTarget):
        from bpfshare.kernel.tc import attach_tc

        tc = attach_tc(
            target.interface,
            target.direction,
            program,
            priority=target.priority,
            handle=target.handle,
            netns=target.netns,
            name=spec.name,
        )
        return Attachment(target, handle=f"{tc.priority}:{tc.handle}")
    return _attach_link(program, target, link_pin_path(pin_dir, target))


def _attach_link(program: Program, target: TcxTarget | CgroupTarget, pin: Path) -> Attachment:
    from bpfshare.kernel.links import Link

    existing = _adopt_link(pin, target)
    if existing is not None:
        with existing:
            if existing.info().prog_id != program.info().id:
                existing.update(program)
            return Attachment(target, link_id=existing.info().id, pin_path=pin)
    if isinstance(target, TcxTarget):
        from bpfshare.kernel.netns import enter_netns, ifindex

        index = ifindex(target.interface, target.netns)
        with enter_netns(target.netns):
            link = Link.create(program, 0, target.attach_type, target_ifindex=index)
    else:
        from bpfshare.kernel.cgroup import open_cgroup

        with open_cgroup(target.path) as cgroup_fd:
            link = Link.create(program, int(cgroup_fd), target.attach_type)
    with link:
        replace_pin(link, pin)
        return Attachment(target, link_id=link.info().id, pin_path=pin)


def _adopt_link(pin: Path, target: TcxTarget | CgroupTarget) -> Link | None:
    """The pinned link for ``target`` if it is still attached to that very target, else None.

    A link whose interface was deleted (and maybe re-created with a new ifindex), or whose cgroup
    was removed, is defunct: unpin it so a fresh one takes its place.
    """
    from bpfshare.kernel.links import Link

    if not pin.exists():
        return None
    link = Link.from_pin(pin)
    try:
        if _link_matches(link, target):
            return link
    except (KernelError, BpfshareError):
        pass
    link.close()
    pin.unlink(missing_ok=True)
    return None


def _link_matches(link: Link, target: TcxTarget | CgroupTarget) -> bool:
    info = link.info()
    if info.attach_type is not None and info.attach_type != target.attach_type:
        return False
    if isinstance(target, TcxTarget):
        from bpfshare.kernel.netns import ifindex

        return bool(info.ifindex) and info.ifindex == ifindex(target.interface, target.netns)
    from bpfshare.kernel.cgroup import resolve_cgroup

    return bool(info.cgroup_id) and info.cgroup_id == os.stat(resolve_cgroup(target.path)).st_ino
