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
import struct
from dataclasses import dataclass
from typing import Self

from bpfshare.errors import KernelError
from bpfshare.kernel.abi import BPF_F_REPLACE, Cmd, LinkInfoStruct
from bpfshare.kernel.objects import KernelObject, ObjectKind, obj_info
from bpfshare.kernel.programs import Program
from bpfshare.kernel.syscall import FD, bpf, new_attr
from bpfshare.types import AttachType


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
    ) -> Self:
        """BPF_LINK_CREATE. cgroup: ``target_fd`` is an O_RDONLY|O_DIRECTORY fd of the cgroup dir.
        tcx: ``target_fd`` 0, ``target_ifindex`` the device (in the calling thread's netns), and
        optionally ``flags`` (BPF_F_BEFORE/AFTER, ...) with ``relative_fd``/``expected_revision``."""
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
            target = f"ifindex {target_ifindex}" if target_ifindex else f"fd {target_fd}"
            raise KernelError(
                f"attaching program {prog.info().name!r} to {target} as {attach_type.name}: {exc}",
                exc.errno,
            ) from None

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
