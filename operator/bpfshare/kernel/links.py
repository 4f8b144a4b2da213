"""``Link``: a kernel-owned attachment of a program (BPF_LINK_CREATE), plus the legacy attach API.

A link is the modern way to attach to cgroups (4.19+ for links, 5.7) and tcx (6.6): it can be
pinned so the attachment outlives the loader, and *updated* to a new program atomically
(BPF_LINK_UPDATE), which is how an upgrade never leaves the target without a program. The
legacy ``prog_attach``/``prog_detach`` and ``query_*`` helpers are here to inspect or clean up what
other tools attached.

Netns caveat for tcx: ``target_ifindex`` (in ``Link.create`` and ``query_tcx``) is looked up in the
*calling thread's* network namespace; wrap the call in ``netns.enter_netns`` (``tcx.attach_tcx``
does).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from bpfshare.errors import BpfshareError, KernelError
from bpfshare.kernel.abi import BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE, BPF_F_REPLACE, Cmd, LinkInfoStruct
from bpfshare.kernel.objects import KernelObject, ObjectKind, obj_info
from bpfshare.kernel.programs import Program
from bpfshare.kernel.syscall import FD, bpf, new_attr
from bpfshare.types import CGROUP_ATTACH_TYPES, AttachType


class LinkType(enum.IntEnum):
    """enum bpf_link_type."""

    Unspec = 0
    RawTracepoint = 1
    Tracing = 2
    Cgroup = 3
    Iter = 4
    Netns = 5
    Xdp = 6
    PerfEvent = 7
    KprobeMulti = 8
    StructOps = 9
    Netfilter = 10
    Tcx = 11
    UprobeMulti = 12
    Netkit = 13
    Sockmap = 14


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type: LinkType
    prog_id: int
    attach_type: AttachType | None = None
    cgroup_id: int | None = None  # cgroup links: the cgroup directory's inode number
    ifindex: int | None = None  # tcx / netkit / xdp links; 0 once the device is gone

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "type": self.type.name, "progId": self.prog_id}
        if self.attach_type is not None:
            out["attachType"] = self.attach_type.name
        if self.cgroup_id is not None:
            out["cgroupId"] = self.cgroup_id
        if self.ifindex is not None:
            out["ifindex"] = self.ifindex
        return out


def _attach_type(value: int) -> AttachType | None:
    try:
        return AttachType(value)
    except ValueError:
        return None


class Link(KernelObject[LinkInfo]):
    """An open link. Closing the fd of an unpinned link detaches it; a pinned one stays."""

    kind = ObjectKind.LINK

    @classmethod
    def create(
        cls,
        prog: Program,
        target_fd: int,
        attach_type: AttachType,
        *,
        target_ifindex: int = 0,
        flags: int = 0,
        relative_fd: int = 0,
        expected_revision: int = 0,
        target_label: str | None = None,
    ) -> Self:
        """BPF_LINK_CREATE. cgroup: ``target_fd`` is an O_RDONLY|O_DIRECTORY fd of the cgroup dir.
        tcx: ``target_fd`` 0, ``target_ifindex`` the device (in the calling thread's netns), and
        optionally ``flags`` (BPF_F_BEFORE/AFTER, ...) with ``relative_fd``/``expected_revision``.

        A refusal names the target (``target_label``, e.g. ``cgroup /a`` or ``eth0 ingress``; by
        default worked out from the fd or ifindex, never a bare descriptor number) and, where the
        kernel's errno has a cause bpfshare can find, says it (``attach_refusal``)."""
        attr = new_attr()
        lc = attr.link_create
        lc.prog_fd = prog.fd
        lc.target_fd = target_ifindex or target_fd  # one field: target_fd / target_ifindex union
        lc.attach_type = int(attach_type)
        lc.flags = flags
        lc.relative_fd = relative_fd
        lc.expected_revision = expected_revision
        try:
            return cls(FD(bpf(Cmd.LINK_CREATE, attr)))
        except KernelError as exc:
            label = target_label or target_description(attach_type, target_fd, target_ifindex)
            cause = attach_refusal(label, attach_type, exc.errno, cgroup_fd=target_fd, ifindex=target_ifindex)
            if cause:
                message = f"{cause} ({exc})"
            else:
                message = f"attaching program {prog.info().name!r} to {label} as {attach_type.name}: {exc}"
                if exc.errno == errno.EPERM:
                    message += " (attaching needs CAP_BPF and CAP_NET_ADMIN, or root)"
            raise KernelError(message, exc.errno) from None

    def _summary(self, info: LinkInfo) -> str:
        return f"id={info.id}, type={info.type.name}, prog_id={info.prog_id}"

    def update(self, new_prog: Program, old_prog: Program | None = None) -> None:
        """Swap the link's program atomically (BPF_LINK_UPDATE). With ``old_prog``, only if the
        link still runs that program (BPF_F_REPLACE; EPERM otherwise): a compare-and-swap."""
        attr = new_attr()
        lu = attr.link_update
        lu.link_fd = self.fd
        lu.new_prog_fd = new_prog.fd
        if old_prog is not None:
            lu.flags = BPF_F_REPLACE
            lu.old_prog_fd = old_prog.fd
        try:
            bpf(Cmd.LINK_UPDATE, attr)
        except KernelError as exc:
            raise KernelError(f"updating link {self.info().id}: {exc}", exc.errno) from None

    def detach(self) -> None:
        """Detach from the target now (BPF_LINK_DETACH), even if pinned; the link object remains
        (defunct) until its last fd and pin are gone."""
        attr = new_attr()
        attr.link_detach.link_fd = self.fd
        bpf(Cmd.LINK_DETACH, attr)

    def info(self) -> LinkInfo:
        raw = obj_info(self.fd, LinkInfoStruct())
        union = bytes(raw.union)
        try:
            ltype = LinkType(raw.type)
        except ValueError:
            ltype = LinkType.Unspec
        info = LinkInfo(id=raw.id, type=ltype, prog_id=raw.prog_id)
        if ltype is LinkType.Cgroup:
            cgroup_id, attach = struct.unpack_from("=QI", union)
            return LinkInfo(raw.id, ltype, raw.prog_id, _attach_type(attach), cgroup_id=cgroup_id)
        if ltype in (LinkType.Tcx, LinkType.Netkit):
            ifindex, attach = struct.unpack_from("=II", union)
            return LinkInfo(raw.id, ltype, raw.prog_id, _attach_type(attach), ifindex=ifindex)
        if ltype is LinkType.Xdp:
            (ifindex,) = struct.unpack_from("=I", union)
            return LinkInfo(raw.id, ltype, raw.prog_id, AttachType.Xdp, ifindex=ifindex)
        if ltype is LinkType.Netns:
            _ino, attach = struct.unpack_from("=II", union)
            return LinkInfo(raw.id, ltype, raw.prog_id, _attach_type(attach))
        return info


# -- legacy attach (BPF_PROG_ATTACH) and queries ------------------------------------------------


def prog_attach(
    target_fd: int, prog_fd: int, attach_type: AttachType, flags: int = 0, replace_prog_fd: int = 0
) -> None:
    """BPF_PROG_ATTACH (cgroup: flags BPF_F_ALLOW_MULTI / ALLOW_OVERRIDE / REPLACE)."""
    attr = new_attr()
    attr.attach.target_fd = target_fd
    attr.attach.attach_bpf_fd = prog_fd
    attr.attach.attach_type = int(attach_type)
    attr.attach.attach_flags = flags
    attr.attach.replace_bpf_fd = replace_prog_fd
    bpf(Cmd.PROG_ATTACH, attr)


def prog_detach(target_fd: int, prog_fd: int, attach_type: AttachType) -> None:
    """BPF_PROG_DETACH of one program (``prog_fd`` 0: the only one, for non-multi attachments)."""
    attr = new_attr()
    attr.attach.target_fd = target_fd
    attr.attach.attach_bpf_fd = prog_fd
    attr.attach.attach_type = int(attach_type)
    bpf(Cmd.PROG_DETACH, attr)


@dataclass(frozen=True)
class QueryResult:
    prog_ids: list[int]
    link_ids: list[int]  # parallel to prog_ids where the kernel reports them (tcx); 0: no link
    revision: int = 0


def _query(target: int, attach_type: AttachType, *, flags: int = 0, with_links: bool) -> QueryResult:
    capacity = 16
    while True:
        progs = (ctypes.c_uint32 * capacity)()
        links = (ctypes.c_uint32 * capacity)()
        attr = new_attr()
        q = attr.query
        q.target_fd = target
        q.attach_type = int(attach_type)
        q.query_flags = flags
        q.prog_ids = ctypes.addressof(progs)
        q.count = capacity
        if with_links:
            q.link_ids = ctypes.addressof(links)
        try:
            bpf(Cmd.PROG_QUERY, attr)
        except KernelError as exc:
            if exc.errno == errno.ENOSPC and capacity < 1 << 16:
                capacity = max(capacity * 2, q.count)
                continue
            raise
        n = q.count
        return QueryResult(list(progs[:n]), list(links[:n]) if with_links else [0] * n, int(q.revision))


def query_cgroup_flags(cgroup_fd: int, attach_type: AttachType) -> tuple[list[int], int]:
    """The programs attached to the cgroup itself for ``attach_type`` and how they were attached:
    BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE or 0 (exclusive: nothing else may join them)."""
    capacity = 64
    while True:
        progs = (ctypes.c_uint32 * capacity)()
        attr = new_attr()
        q = attr.query
        q.target_fd = cgroup_fd
        q.attach_type = int(attach_type)
        q.prog_ids = ctypes.addressof(progs)
        q.count = capacity
        try:
            bpf(Cmd.PROG_QUERY, attr)
        except KernelError as exc:
            if exc.errno == errno.ENOSPC and capacity < 1 << 16:
                capacity = max(capacity * 2, q.count)
                continue
            raise
        return list(progs[: q.count]), int(q.attach_flags)


def query_cgroup(cgroup_fd: int, attach_type: AttachType, *, effective: bool = False) -> list[int]:
    """IDs of the programs attached to a cgroup for ``attach_type`` (in run order).

    ``effective``: include those inherited from ancestor cgroups (what actually runs).
    """
    from bpfshare.kernel.abi import BPF_F_QUERY_EFFECTIVE

    flags = BPF_F_QUERY_EFFECTIVE if effective else 0
    return _query(cgroup_fd, attach_type, flags=flags, with_links=False).prog_ids


def query_tcx(ifindex: int, attach_type: AttachType) -> QueryResult:
    """Programs (and their link IDs) on a device's tcx hook, in run order; the ifindex is looked
    up in the calling thread's netns."""
    if attach_type not in (AttachType.TcxIngress, AttachType.TcxEgress):
        raise ValueError(f"query_tcx needs TcxIngress or TcxEgress, not {attach_type.name}")
    return _query(ifindex, attach_type, with_links=True)


# -- why an attachment was refused ----------------------------------------------------------------

# How many programs one hook holds: include/linux/bpf-cgroup.h BPF_CGROUP_MAX_PROGS for a cgroup;
# include/linux/bpf_mprog.h bpf_mprog_max() for tcx, its 64 slots less the one that ends the array.
CGROUP_MAX_PROGS = 64
TCX_MAX_PROGS = 63
TCX_TYPES = (AttachType.TcxIngress, AttachType.TcxEgress)
_CGROUP_SHORT_NAMES = {attach: short for short, attach in CGROUP_ATTACH_TYPES.items()}


def target_description(attach_type: AttachType, target_fd: int, target_ifindex: int) -> str:
    """How a message names a link's target when the caller did not: ``cgroup /a`` (relative to the
    cgroup v2 root) from the fd's path, ``eth0 ingress`` from the ifindex (in the calling thread's
    netns); the bare number only when neither can be found."""
    if target_ifindex:
        direction = "ingress" if attach_type is AttachType.TcxIngress else "egress"
        try:
            return f"{socket.if_indextoname(target_ifindex)} {direction}"
        except OSError:
            return f"ifindex {target_ifindex} {direction}"
    try:
        path = Path(os.readlink(f"/proc/self/fd/{target_fd}"))
    except OSError:
        return f"fd {target_fd}"
    return f"cgroup {cgroup_display(path)}"


def attach_refusal(label: str, attach_type: AttachType, err: int, *, cgroup_fd: int = 0, ifindex: int = 0) -> str:
    """The cause of a refused BPF_LINK_CREATE in words, or "" when there is none to find.

    - cgroup, EPERM: a program attached to the cgroup without BPF_F_ALLOW_MULTI (exclusive, or
      with BPF_F_ALLOW_OVERRIDE), which a link (always multi) may not join; or one attached
      exclusively to an ancestor, which forbids programs below it (kernel/bpf/cgroup.c
      __cgroup_bpf_attach and hierarchy_allows_attach). Otherwise EPERM is privileges.
    - cgroup, E2BIG: the hook holds BPF_CGROUP_MAX_PROGS programs already.
    - tcx, ERANGE: the hook holds bpf_mprog_max() programs already (kernel/bpf/mprog.c).
    The queries run where the attach ran (a tcx ifindex in the calling thread's netns).
    """
    try:
        if attach_type in TCX_TYPES:
            if err == errno.ERANGE and ifindex:
                count = len(query_tcx(ifindex, attach_type).prog_ids)
                return f"{label} already holds {count} tcx programs, the kernel's limit"
            return ""
        if attach_type not in _CGROUP_SHORT_NAMES or not cgroup_fd:
            return ""
        if err == errno.E2BIG:
            attached, _ = query_cgroup_flags(cgroup_fd, attach_type)
            short = _CGROUP_SHORT_NAMES[attach_type]
            return f"{label} already holds {len(attached)} programs for {short}, the kernel's limit"
        if err == errno.EPERM:
            return _cgroup_eperm(label, attach_type, cgroup_fd)
    except (KernelError, OSError):
        return ""  # the query itself failed: the errno is all there is
    return ""


_NOT_REPLACED = "bpfshare does not replace it"


def _cgroup_eperm(label: str, attach_type: AttachType, cgroup_fd: int) -> str:
    held, flags = query_cgroup_flags(cgroup_fd, attach_type)
    if held and not flags & BPF_F_ALLOW_MULTI:
        how = "with BPF_F_ALLOW_OVERRIDE" if flags & BPF_F_ALLOW_OVERRIDE else "exclusively"
        return (
            f"{label}: another program is attached there {how} (by another tool, without "
            f"BPF_F_ALLOW_MULTI): {_NOT_REPLACED}"
        )
    from bpfshare.kernel.cgroup import cgroup2_root

    directory = Path(os.readlink(f"/proc/self/fd/{cgroup_fd}"))
    root = Path(os.path.realpath(cgroup2_root()))
    for ancestor in directory.parents:
        if not ancestor.is_relative_to(root):
            break
        with FD(os.open(ancestor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as fd:
            above, above_flags = query_cgroup_flags(int(fd), attach_type)
        if above and not above_flags & (BPF_F_ALLOW_MULTI | BPF_F_ALLOW_OVERRIDE):
            return (
                f"{label}: cgroup {cgroup_display(ancestor)} above it has a program attached exclusively (by "
                f"another tool, without BPF_F_ALLOW_OVERRIDE or BPF_F_ALLOW_MULTI), which forbids programs in "
                f"the cgroups below: {_NOT_REPLACED}"
            )
        if above and above_flags & BPF_F_ALLOW_MULTI:
            break  # a multi ancestor allows anything below it (hierarchy_allows_attach)
    return ""


def cgroup_display(path: Path) -> str:
    """A cgroup directory as users name it: ``/a/b`` relative to the cgroup v2 root (the full path
    when it is outside)."""
    from bpfshare.kernel.cgroup import cgroup2_root

    try:
        root = Path(os.path.realpath(cgroup2_root()))
    except BpfshareError:
        return str(path)
    real = Path(os.path.realpath(path))
    if real == root:
        return "/"
    if real.is_relative_to(root):
        return "/" + str(real.relative_to(root))
    return str(path)
