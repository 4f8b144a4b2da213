"""tc (cls_bpf on a clsact qdisc) attachments over netlink, with pyroute2.

An attachment is addressed by (interface, direction, priority, handle). Attaching at an address
that already holds a filter *replaces* it (RTM_NEWTFILTER with NLM_F_REPLACE): cls_bpf swaps the
program under RCU, so packets see the old program or the new one, never none. Filters are always
direct-action (the program's return code is the verdict) and match every protocol (ETH_P_ALL).

pyroute2 is imported inside the functions (it is slow to import and only tc needs it), and its
netlink socket is created *inside* the target netns: a netlink socket talks to the namespace it
was created in. pyroute2 0.9 does not decode TCA_BPF_ID / TCA_BPF_TAG, so those are read from the
raw TCA_OPTIONS attribute.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bpfshare.errors import KernelError, TargetNotFoundError
from bpfshare.kernel.netns import enter_netns, netns_label
from bpfshare.kernel.programs import Program

if TYPE_CHECKING:
    from pyroute2 import IPRoute

Direction = Literal["ingress", "egress"]

TC_H_CLSACT_PARENT = 0xFFFFFFF1  # the clsact (and ingress) qdisc's parent
PARENTS: dict[str, int] = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}  # ffff:fff2 / ffff:fff3
ETH_P_ALL = 0x0003

# linux/pkt_cls.h
TCA_BPF_NAME = 7
TCA_BPF_FLAGS = 8
TCA_BPF_TAG = 10
TCA_BPF_ID = 11
TCA_BPF_FLAG_ACT_DIRECT = 1
NLA_TYPE_MASK = 0x3FFF
TCA_KIND = 1

# linux/netlink.h, linux/rtnetlink.h
NLMSG_HDRLEN = 16
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_ECHO = 0x1, 0x4, 0x8
RTM_NEWQDISC, RTM_GETQDISC = 36, 38


@dataclass(frozen=True)
class TcFilter:
    ifindex: int
    ifname: str
    direction: Direction
    priority: int
    handle: int
    prog_id: int
    name: str
    tag: str = ""
    direct_action: bool = True
    netns: str | None = None

    def describe(self) -> dict[str, object]:
        return {
            "interface": self.ifname,
            "direction": self.direction,
            "priority": self.priority,
            "handle": self.handle,
            "progId": self.prog_id,
            "name": self.name,
            "netns": self.netns,
        }


def _parent(direction: str) -> int:
    try:
        return PARENTS[direction]
    except KeyError:
        raise ValueError(f"tc direction must be ingress or egress, not {direction!r}") from None


@contextmanager
def _iproute(netns: str | None) -> Iterator[IPRoute]:
    """An IPRoute whose socket lives in ``netns``; every call must happen inside this block."""
    from pyroute2 import IPRoute

    with enter_netns(netns), IPRoute() as ipr:
        yield ipr


def _ifindex(ifname: str, netns: str | None) -> int:
    """The interface's index in the calling thread's namespace (call it inside ``_iproute``).

    if_nametoindex is one ioctl; pyroute2's link_lookup decodes a whole RTM_NEWLINK message in
    Python (0.6 ms, a fifth of an idle resync pass over hundreds of tc programs)."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise TargetNotFoundError(f"interface {ifname!r} not found in {netns_label(netns)}") from None


def _netlink_error(what: str, exc: Exception) -> KernelError:
    code = int(getattr(exc, "code", 0) or 0)
    text = os.strerror(code) if code else str(exc)
    return KernelError(f"tc: {what}: {text}", code)


def _ensure_clsact(ipr: IPRoute, index: int, ifname: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.tc("add", "clsact", index)
        return
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _netlink_error(f"adding clsact qdisc on {ifname}", exc) from None
    # Something sits at ffff:: already: fine if it is clsact, not if it is the old ingress qdisc
    # (which has no egress hook and must not be removed under someone else's filters).
    kind = _ingress_qdisc_kind(index)
    if kind is not None and kind != "clsact":
        raise KernelError(
            f"tc: {ifname} has a {kind!r} qdisc where clsact is needed; "
            "remove it first (tc qdisc del dev IFACE ingress)",
            errno.EEXIST,
        )


def _ingress_qdisc_kind(index: int) -> str | None:
    """The kind of the qdisc at ffff:fff1 on one interface (clsact, ingress), None if there is none.

    One RTM_GETQDISC request for that qdisc (not a dump; NLM_F_ECHO makes the kernel send it back)
    on a netlink socket made in the calling thread's namespace. pyroute2's get_qdiscs(index) dumps
    every qdisc of the namespace and filters in Python: about 0.1 ms per qdisc, so 30 ms per call
    with 300 veths with clsact, and quadratic time to attach to them all.
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        tcmsg = struct.pack("=BxxxiIII", socket.AF_UNSPEC, index, 0, TC_H_CLSACT_PARENT, 0)
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO
        sock.send(struct.pack("=IHHII", NLMSG_HDRLEN + len(tcmsg), RTM_GETQDISC, flags, 1, 0) + tcmsg)
        kind = None
        while True:
            data = sock.recv(65536)
            pos = 0
            while pos + NLMSG_HDRLEN <= len(data):
                length, msg_type = struct.unpack_from("=IH", data, pos)
                if length < NLMSG_HDRLEN:
                    return kind
                if msg_type == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, pos + NLMSG_HDRLEN)[0]
                    if err and err != errno.ENOENT:
                        raise KernelError(f"tc: reading the qdisc at ffff:fff1: {os.strerror(err)}", err)
                    return kind
                if msg_type == RTM_NEWQDISC:
                    attrs = _parse_attrs(data[pos + NLMSG_HDRLEN + len(tcmsg) : pos + length])
                    kind = attrs.get(TCA_KIND, b"").split(b"\0", 1)[0].decode(errors="replace")
                pos += (length + 3) & ~3


def attach_tc(
    ifname: str,
    direction: Direction,
    prog: Program,
    *,
    priority: int = 1,
    handle: int = 1,
    netns: str | None = None,
    name: str = "",
) -> TcFilter:
    """Attach ``prog`` as a direct-action cls_bpf filter, replacing whatever filter is at
    (priority, handle); creates the clsact qdisc if missing."""
    from pyroute2.netlink.exceptions import NetlinkError

    parent = _parent(direction)
    if not 1 <= priority <= 0xFFFF:
        raise ValueError(f"tc priority must be 1..65535, not {priority}")
    label = name or prog.info().name or "bpf"
    with _iproute(netns) as ipr:
        index = _ifindex(ifname, netns)
        _ensure_clsact(ipr, index, ifname)
        try:
            ipr.tc(
                "replace-filter", "bpf", index, handle,
                parent=parent, prio=priority, protocol=ETH_P_ALL,
                fd=prog.fd, name=label, direct_action=True,
            )
        except NetlinkError as exc:
            where = f"{ifname} {direction} priority {priority} handle {handle} in {netns_label(netns)}"
            raise _netlink_error(f"attaching bpf filter on {where}", exc) from None
        for found in _filters(ipr, index, ifname, direction, netns):
            if (found.priority, found.handle) == (priority, handle):
                return found
    raise KernelError(f"tc: filter on {ifname} {direction} priority {priority} vanished right after attach")


def list_tc_filters(ifname: str, direction: Direction, netns: str | None = None) -> list[TcFilter]:
    """The cls_bpf filters on an interface's clsact hook (none if there is no clsact qdisc)."""
    with _iproute(netns) as ipr:
        index = _ifindex(ifname, netns)
        return list(_filters(ipr, index, ifname, direction, netns))


def detach_tc(
    ifname: str, direction: Direction, priority: int, handle: int, netns: str | None = None
) -> bool:
    """Remove the filter at (priority, handle); False if there was none."""
    from pyroute2.netlink.exceptions import NetlinkError

    parent = _parent(direction)
    with _iproute(netns) as ipr:
        index = _ifindex(ifname, netns)
        if not any((f.priority, f.handle) == (priority, handle)
                   for f in _filters(ipr, index, ifname, direction, netns)):
            return False
        try:
            ipr.tc("del-filter", index=index, handle=handle, parent=parent,
                   info=(priority << 16) | socket.htons(ETH_P_ALL))
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.EINVAL):
                return False
            where = f"{priority}:{handle} on {ifname} {direction}"
            raise _netlink_error(f"removing filter {where}", exc) from None
    return True


def _filters(
    ipr: IPRoute, index: int, ifname: str, direction: Direction, netns: str | None
) -> Iterator[TcFilter]:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        messages = list(ipr.get_filters(index=index, parent=_parent(direction)))
    except NetlinkError as exc:
        if exc.code in (errno.EINVAL, errno.ENOENT):  # no clsact qdisc: no filters
            return
        raise _netlink_error(f"listing filters on {ifname} {direction}", exc) from None
    for msg in messages:
        if msg.get_attr("TCA_KIND") != "bpf" or not msg["handle"]:
            continue  # the per-priority chain head carries no handle
        opts = _raw_attrs(msg.get_attr("TCA_OPTIONS"))
        flags = struct.unpack_from("=I", opts[TCA_BPF_FLAGS])[0] if TCA_BPF_FLAGS in opts else 0
        yield TcFilter(
            ifindex=index,
            ifname=ifname,
            direction=direction,
            priority=msg["info"] >> 16,
            handle=msg["handle"],
            prog_id=struct.unpack_from("=I", opts[TCA_BPF_ID])[0] if TCA_BPF_ID in opts else 0,
            name=opts.get(TCA_BPF_NAME, b"").split(b"\0", 1)[0].decode(errors="replace"),
            tag=opts.get(TCA_BPF_TAG, b"").hex(),
            direct_action=bool(flags & TCA_BPF_FLAG_ACT_DIRECT),
            netns=netns,
        )


def _raw_attrs(nla: Any) -> dict[int, bytes]:
    """The nested attributes of a decoded pyroute2 NLA, from its raw bytes: {type: payload}."""
    if nla is None:
        return {}
    raw = bytes(nla.data[nla.offset : nla.offset + nla.length])
    return _parse_attrs(raw[4:])  # skip the attribute's own header


def _parse_attrs(raw: bytes) -> dict[int, bytes]:
    """Netlink attributes packed in ``raw``: {type: payload}."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(raw):
        length, kind = struct.unpack_from("=HH", raw, pos)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = raw[pos + 4 : pos + length]
        pos += (length + 3) & ~3
    return out
