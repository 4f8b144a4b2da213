"""tc (cls_bpf on a clsact qdisc) attachments over netlink: changes with pyroute2, reads raw.

An attachment is addressed by (interface, direction, priority, handle). Attaching at an address
that already holds a filter *replaces* it (RTM_NEWTFILTER with NLM_F_REPLACE): cls_bpf swaps the
program under RCU, so packets see the old program or the new one, never none. Filters are always
direct-action (the program's return code is the verdict) and match every protocol (ETH_P_ALL).

pyroute2 is imported inside the functions (it is slow to import and only tc changes need it).
Reads (the qdisc at ffff:fff1, filter dumps) are single rtnetlink requests decoded here: they run
for every tc target at every resync, and pyroute2 costs ~15x more per read. Every netlink socket
is created *inside* the target netns: a netlink socket talks to the namespace it was created in.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bpfshare.errors import KernelError, TargetNotFoundError
from bpfshare.kernel.netns import check_interface_name, enter_netns, netns_label
from bpfshare.kernel.programs import Program
from bpfshare.types import Direction

if TYPE_CHECKING:
    from pyroute2 import IPRoute


def warm() -> None:
    """Import what tc changes need (pyroute2: about 0.2 s of CPU), for a long-running agent to pay
    at start rather than in its first rollout."""
    import pyroute2
    import pyroute2.netlink.exceptions  # noqa: F401


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
TCA_KIND, TCA_OPTIONS = 1, 2

# linux/netlink.h, linux/rtnetlink.h
NLMSG_HDRLEN = 16
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_ECHO, NLM_F_DUMP = 0x1, 0x4, 0x8, 0x300
RTM_NEWQDISC, RTM_GETQDISC, RTM_NEWTFILTER, RTM_GETTFILTER = 36, 38, 44, 46
TCMSG = "=BxxxiIII"  # struct tcmsg: family, ifindex, handle, parent, info
TCMSG_LEN = struct.calcsize(TCMSG)


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
    check_interface_name(ifname)
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

    One RTM_GETQDISC request for that qdisc (not a dump; NLM_F_ECHO makes the kernel send it back).
    pyroute2's get_qdiscs(index) dumps every qdisc of the namespace and filters in Python: about
    0.1 ms per qdisc, so 30 ms per call with 300 veths with clsact, and quadratic time to attach to
    them all.
    """
    tcmsg = struct.pack(TCMSG, socket.AF_UNSPEC, index, 0, TC_H_CLSACT_PARENT, 0)
    try:
        replies = _rtnl_request(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO, tcmsg)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise KernelError(f"tc: reading the qdisc at ffff:fff1: {exc.strerror}", exc.errno or 0) from None
    for msg_type, payload in replies:
        if msg_type == RTM_NEWQDISC:
            return _string(_parse_attrs(payload[TCMSG_LEN:]).get(TCA_KIND, b""))
    return None


def _rtnl_request(msg_type: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
    """One rtnetlink request on a socket made in the calling thread's namespace: the messages it
    gets back, as (type, payload), up to the ack or NLMSG_DONE. OSError(errno) if the kernel answers
    with an error.

    Used for the reads (a qdisc, a filter dump), which are the per-target checks of every resync:
    a pyroute2 IPRoute costs a new asyncio event loop and decodes every attribute in Python (about
    1.5 ms per listing, a quarter of an idle resync pass over hundreds of tc programs), this about
    0.1 ms. Writes (qdisc and filter changes) stay with pyroute2.
    """
    out: list[tuple[int, bytes]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.send(struct.pack("=IHHII", NLMSG_HDRLEN + len(body), msg_type, flags, 1, 0) + body)
        while True:
            data = sock.recv(1 << 16)
            pos = 0
            while pos + NLMSG_HDRLEN <= len(data):
                length, kind = struct.unpack_from("=IH", data, pos)
                if length < NLMSG_HDRLEN:
                    raise OSError(errno.EBADMSG, "malformed netlink message")
                payload = data[pos + NLMSG_HDRLEN : pos + length]
                if kind in (NLMSG_ERROR, NLMSG_DONE):
                    err = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if err:
                        raise OSError(err, os.strerror(err))
                    return out
                out.append((kind, payload))
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
    check_interface_name(ifname)
    if not 1 <= priority <= 0xFFFF:
        raise ValueError(f"tc priority must be 1..65535, not {priority}")
    label = name or prog.info().name or "bpf"
    with _iproute(netns) as ipr:
        index = _ifindex(ifname, netns)
        _ensure_clsact(ipr, index, ifname)
        try:
            ipr.tc(
                "replace-filter",
                "bpf",
                index,
                handle,
                parent=parent,
                prio=priority,
                protocol=ETH_P_ALL,
                fd=prog.fd,
                name=label,
                direct_action=True,
            )
        except NetlinkError as exc:
            where = f"{ifname} {direction} priority {priority} handle {handle} in {netns_label(netns)}"
            raise _netlink_error(f"attaching bpf filter on {where}", exc) from None
        for found in _filters(index, ifname, direction, netns):
            if (found.priority, found.handle) == (priority, handle):
                return found
    raise KernelError(f"tc: filter on {ifname} {direction} priority {priority} vanished right after attach")


def list_tc_filters(ifname: str, direction: Direction, netns: str | None = None) -> list[TcFilter]:
    """The cls_bpf filters on an interface's clsact hook (none if there is no clsact qdisc)."""
    check_interface_name(ifname)
    with enter_netns(netns):
        index = _ifindex(ifname, netns)
        return list(_filters(index, ifname, direction, netns))


def detach_tc(ifname: str, direction: Direction, priority: int, handle: int, netns: str | None = None) -> bool:
    """Remove the filter at (priority, handle); False if there was none."""
    from pyroute2.netlink.exceptions import NetlinkError

    parent = _parent(direction)
    check_interface_name(ifname)
    with _iproute(netns) as ipr:
        index = _ifindex(ifname, netns)
        if not any((f.priority, f.handle) == (priority, handle) for f in _filters(index, ifname, direction, netns)):
            return False
        try:
            ipr.tc(
                "del-filter", index=index, handle=handle, parent=parent, info=(priority << 16) | socket.htons(ETH_P_ALL)
            )
        except NetlinkError as exc:
            # ENODEV: the interface went between the lookup and the delete (a pod's veth, removed by
            # CNI before its namespace): its filters went with it.
            if exc.code in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                return False
            where = f"{priority}:{handle} on {ifname} {direction}"
            raise _netlink_error(f"removing filter {where}", exc) from None
    return True


def _filters(index: int, ifname: str, direction: Direction, netns: str | None) -> Iterator[TcFilter]:
    """The cls_bpf filters on the hook, from one filter dump (in the calling thread's namespace)."""
    tcmsg = struct.pack(TCMSG, socket.AF_UNSPEC, index, 0, _parent(direction), 0)
    try:
        replies = _rtnl_request(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, tcmsg)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):  # no clsact qdisc: no filters
            return
        raise KernelError(f"tc: listing filters on {ifname} {direction}: {exc.strerror}", exc.errno or 0) from None
    for msg_type, payload in replies:
        if msg_type != RTM_NEWTFILTER or len(payload) < TCMSG_LEN:
            continue
        _, _, handle, _, info = struct.unpack_from(TCMSG, payload)
        attrs = _parse_attrs(payload[TCMSG_LEN:])
        if _string(attrs.get(TCA_KIND, b"")) != "bpf" or not handle:
            continue  # the per-priority chain head carries no handle
        opts = _parse_attrs(attrs.get(TCA_OPTIONS, b""))
        flags = struct.unpack_from("=I", opts[TCA_BPF_FLAGS])[0] if TCA_BPF_FLAGS in opts else 0
        yield TcFilter(
            ifindex=index,
            ifname=ifname,
            direction=direction,
            priority=info >> 16,
            handle=handle,
            prog_id=struct.unpack_from("=I", opts[TCA_BPF_ID])[0] if TCA_BPF_ID in opts else 0,
            name=_string(opts.get(TCA_BPF_NAME, b"")),
            tag=opts.get(TCA_BPF_TAG, b"").hex(),
            direct_action=bool(flags & TCA_BPF_FLAG_ACT_DIRECT),
            netns=netns,
        )


def _string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


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
