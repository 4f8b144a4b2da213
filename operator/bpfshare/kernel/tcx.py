"""tcx (6.6+): tc's successor hook, attached through links instead of qdiscs and filters.

The kernel looks the ifindex up in the calling thread's netns, so both the lookup and the link
creation happen inside ``enter_netns``. Once created, a link works from anywhere (its fd and pin
are not tied to a namespace).
"""

from __future__ import annotations

from bpfshare.kernel.links import Link, QueryResult, query_tcx
from bpfshare.kernel.netns import enter_netns, ifindex, netns_label
from bpfshare.kernel.programs import Program
from bpfshare.types import AttachType, Direction


def tcx_attach_type(direction: str) -> AttachType:
    if direction == "ingress":
        return AttachType.TcxIngress
    if direction == "egress":
        return AttachType.TcxEgress
    raise ValueError(f"tcx direction must be ingress or egress, not {direction!r}")


def attach_tcx(ifname: str, direction: Direction, prog: Program, *, netns: str | None = None, flags: int = 0) -> Link:
    """Attach ``prog`` to ``ifname``'s tcx hook (appended after existing programs by default)."""
    attach_type = tcx_attach_type(direction)
    with enter_netns(netns):
        index = ifindex(ifname)
        label = tcx_label(ifname, direction, netns)
        return Link.create(prog, 0, attach_type, target_ifindex=index, flags=flags, target_label=label)


def tcx_label(ifname: str, direction: str, netns: str | None) -> str:
    """How messages name a tcx hook: ``eth0 ingress``, ``eth0 ingress in network namespace 'x'``."""
    return f"{ifname} {direction}" + (f" in {netns_label(netns)}" if netns else "")


def list_tcx(ifname: str, direction: Direction, netns: str | None = None) -> QueryResult:
    """Programs on ``ifname``'s tcx hook, in run order, with their link IDs."""
    attach_type = tcx_attach_type(direction)
    with enter_netns(netns):
        return query_tcx(ifindex(ifname), attach_type)
