"""Attach targets (tc, tcx, cgroup) and the one way to attach a loaded program to them.

Links are pinned under the program's pin directory and re-adopted on the next run: a pinned link
whose target still exists is *updated* to the new program (BPF_LINK_UPDATE, no moment without a
program) rather than attached a second time. tc filters are replaced in place at their
priority/handle for the same reason.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from bpfshare.api.status import AttachmentStatus
from bpfshare.api.targets import AttachTarget, CgroupTarget, TcTarget, TcxTarget, parse_attach
from bpfshare.errors import BpfshareError
from bpfshare.kernel.pins import replace_pin
from bpfshare.spec import ProgramSpec
from bpfshare.types import CGROUP_PROG_TYPE, ProgType

if TYPE_CHECKING:
    from bpfshare.kernel.links import Link
    from bpfshare.kernel.programs import Program

LINKS_DIR = "links"
NAME_MAX = 255  # the longest file name (bpffs like any filesystem): a link pin name fits it
HASHED_LINK_PIN = re.compile(r"(tc|tcx|cgroup)~[0-9a-f]{40}")  # never a readable name: those have ':'
TC_PROG_TYPES = (ProgType.SchedCls, ProgType.SchedAct)


@dataclass(frozen=True)
class Attachment:
    target: AttachTarget
    link_id: int | None = None
    pin_path: Path | None = None
    handle: str | None = None  # tc: "prio:handle"

    def describe(self) -> dict[str, object]:
        """As status shows an attachment (``api.status.AttachmentStatus``)."""
        pin = str(self.pin_path) if self.pin_path is not None else None
        return AttachmentStatus(self.target.key, self.link_id, pin, self.handle).to_dict()


def check_fits(program: ProgramSpec, target: AttachTarget) -> None:
    """Refuse a program type that cannot attach to the target, before asking the kernel."""
    where = f"program {program.name!r} (section {program.section!r}, type {program.type.name})"
    if not isinstance(target, CgroupTarget):
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


def link_pin_name(target: AttachTarget) -> str:
    """The name of the target's link pin: its key, percent-encoded (reversible, and free of '/'
    and of '.', which bpffs refuses in names), as long as that fits a name (NAME_MAX, 255 bytes).

    A longer one (a deep cgroup path, whose '/'s each take three bytes) would be refused with
    ENAMETOOLONG: it gets ``<kind>~<40 hex digits>`` instead, a digest of the key, as stable as
    the key itself. Every name that fits keeps the readable form, so existing pins are found as
    before. A hashed name cannot be read back: ``link_pin_target`` matches it to candidates."""
    readable = quote(target.key, safe="@:-_").replace(".", "%2E")
    if len(readable) <= NAME_MAX:
        return readable
    return f"{target.kind}~{_key_digest(target.key)}"


def link_pin_path(pin_dir: Path, target: AttachTarget) -> Path:
    """One pin per target, ``<pin dir>/links/<link_pin_name>``."""
    return pin_dir / LINKS_DIR / link_pin_name(target)


def is_hashed_link_pin(name: str) -> bool:
    """Whether ``name`` is a hashed link pin name (``link_pin_name`` of a target whose key is too
    long to spell out): one of ours, but only its target's key can say which target."""
    return HASHED_LINK_PIN.fullmatch(name) is not None


class HashedLinkPinError(BpfshareError):
    """A hashed link pin name, which cannot be turned back into its target on its own."""


def target_from_link_pin(name: str) -> AttachTarget:
    """The target a readable link pin name spells out. A hashed name raises HashedLinkPinError
    (a BpfshareError): ask ``link_pin_target`` with the targets it may belong to."""
    if is_hashed_link_pin(name):
        raise HashedLinkPinError(
            f"link pin {name!r} is named by a digest of its target's key: match it with link_pin_target"
        )
    return parse_attach(unquote(name))


def link_pin_target(name: str, candidates: Iterable[AttachTarget]) -> AttachTarget | None:
    """The target the link pin ``name`` belongs to: a readable name is read (candidates or not), a
    hashed one is the candidate whose ``link_pin_name`` it is. None: a name bpfshare does not make,
    or a hashed name of none of the candidates (``is_hashed_link_pin`` tells the two apart)."""
    if is_hashed_link_pin(name):
        return next((t for t in candidates if link_pin_name(t) == name), None)
    try:
        return parse_attach(unquote(name))
    except BpfshareError:
        return None


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]


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
        from bpfshare.kernel.tcx import tcx_label

        index = ifindex(target.interface, target.netns)
        label = tcx_label(target.interface, target.direction, target.netns)
        with enter_netns(target.netns):
            link = Link.create(program, 0, target.attach_type, target_ifindex=index, target_label=label)
    else:
        from bpfshare.kernel.cgroup import open_cgroup

        with open_cgroup(target.path) as cgroup_fd:
            label = f"cgroup /{target.path.strip('/')}"
            link = Link.create(program, int(cgroup_fd), target.attach_type, target_label=label)
    with link:
        replace_pin(link, pin)
        return Attachment(target, link_id=link.info().id, pin_path=pin)


def _adopt_link(pin: Path, target: TcxTarget | CgroupTarget) -> Link | None:
    """The pinned link for ``target`` if it is still attached to that very target, else None.

    A link whose interface was deleted (and maybe re-created with a new ifindex), or whose cgroup
    was removed, is defunct: unpin it so a fresh one takes its place. Only a link known to be
    defunct is unpinned: when the kernel cannot say (a refused setns, a missing target), the error
    goes to the caller and the link, which may well be running, stays.
    """
    from bpfshare.kernel.links import Link

    if not pin.exists():
        return None
    link = Link.from_pin(pin)
    try:
        matches = _link_matches(link, target)
    except BaseException:
        link.close()
        raise
    if matches:
        return link
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
