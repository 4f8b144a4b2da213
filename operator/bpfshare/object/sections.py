"""Program type and expected attach type from the section name, after libbpf's ``section_defs``.

Each convention is ``(pattern, program type, attach type)``. As in libbpf (>= 1.0), a pattern ending
in ``/`` matches any section starting with it; one ending in ``+`` matches the bare name or
``name/anything``; any other pattern matches exactly. The first matching row wins, so more
specific rows come first. Sections no row matches fall back to libbpf 0.x's looser rule (the
section starts with a pattern: ``classifier/ingress``, ``xdp_prog``), which is what objects
written for iproute2, whose ``sec`` argument takes any section name, rely on. Unknown sections get
``ProgType.Unspec``: ``inspect`` shows them, the loader refuses them.

``tc/ingress`` and ``tc/egress`` follow libbpf >= 1.3: aliases of ``tcx/ingress``/``tcx/egress``
(SchedCls with the tcx attach type; a SchedCls program's expected attach type is informational,
so it can still be attached with cls_bpf).
"""

from __future__ import annotations

import functools

from bpfshare.types import AttachType as A
from bpfshare.types import ProgType as P

Convention = tuple[str, P, A | None]

CONVENTIONS: tuple[Convention, ...] = (
    ("socket", P.SocketFilter, None),
    ("sk_reuseport/migrate", P.SkReuseport, A.SkReuseportSelectOrMigrate),
    ("sk_reuseport", P.SkReuseport, A.SkReuseportSelect),
    ("kprobe.multi+", P.Kprobe, A.TraceKprobeMulti),
    ("kretprobe.multi+", P.Kprobe, A.TraceKprobeMulti),
    ("kprobe.session+", P.Kprobe, A.TraceKprobeSession),
    ("uprobe.multi+", P.Kprobe, A.TraceUprobeMulti),
    ("uretprobe.multi+", P.Kprobe, A.TraceUprobeMulti),
    ("uprobe.multi.s+", P.Kprobe, A.TraceUprobeMulti),
    ("uretprobe.multi.s+", P.Kprobe, A.TraceUprobeMulti),
    ("kprobe+", P.Kprobe, None),
    ("uprobe+", P.Kprobe, None),
    ("uprobe.s+", P.Kprobe, None),
    ("kretprobe+", P.Kprobe, None),
    ("uretprobe+", P.Kprobe, None),
    ("uretprobe.s+", P.Kprobe, None),
    ("ksyscall+", P.Kprobe, None),
    ("kretsyscall+", P.Kprobe, None),
    ("usdt+", P.Kprobe, None),
    ("usdt.s+", P.Kprobe, None),
    ("tc/ingress", P.SchedCls, A.TcxIngress),
    ("tc/egress", P.SchedCls, A.TcxEgress),
    ("tcx/ingress", P.SchedCls, A.TcxIngress),
    ("tcx/egress", P.SchedCls, A.TcxEgress),
    ("tc", P.SchedCls, None),
    ("classifier", P.SchedCls, None),
    ("action", P.SchedAct, None),
    ("netkit/primary", P.SchedCls, A.NetkitPrimary),
    ("netkit/peer", P.SchedCls, A.NetkitPeer),
    ("tracepoint+", P.Tracepoint, None),
    ("tp+", P.Tracepoint, None),
    ("raw_tracepoint+", P.RawTracepoint, None),
    ("raw_tp+", P.RawTracepoint, None),
    ("raw_tracepoint.w+", P.RawTracepointWritable, None),
    ("raw_tp.w+", P.RawTracepointWritable, None),
    ("tp_btf+", P.Tracing, A.TraceRawTp),
    ("fentry+", P.Tracing, A.TraceFentry),
    ("fmod_ret+", P.Tracing, A.ModifyReturn),
    ("fexit+", P.Tracing, A.TraceFexit),
    ("fentry.s+", P.Tracing, A.TraceFentry),
    ("fmod_ret.s+", P.Tracing, A.ModifyReturn),
    ("fexit.s+", P.Tracing, A.TraceFexit),
    ("freplace+", P.Ext, None),
    ("lsm+", P.Lsm, A.LsmMac),
    ("lsm.s+", P.Lsm, A.LsmMac),
    ("lsm_cgroup+", P.Lsm, A.LsmCgroup),
    ("iter+", P.Tracing, A.TraceIter),
    ("iter.s+", P.Tracing, A.TraceIter),
    ("syscall", P.Syscall, None),
    ("xdp.frags/devmap", P.Xdp, A.XdpDevmap),
    ("xdp/devmap", P.Xdp, A.XdpDevmap),
    ("xdp.frags/cpumap", P.Xdp, A.XdpCpumap),
    ("xdp/cpumap", P.Xdp, A.XdpCpumap),
    ("xdp.frags", P.Xdp, A.Xdp),
    ("xdp", P.Xdp, A.Xdp),
    ("perf_event", P.PerfEvent, None),
    ("lwt_in", P.LwtIn, None),
    ("lwt_out", P.LwtOut, None),
    ("lwt_xmit", P.LwtXmit, None),
    ("lwt_seg6local", P.LwtSeg6local, None),
    ("sockops", P.SockOps, A.CgroupSockOps),
    ("sk_skb/stream_parser", P.SkSkb, A.SkSkbStreamParser),
    ("sk_skb/stream_verdict", P.SkSkb, A.SkSkbStreamVerdict),
    ("sk_skb/verdict", P.SkSkb, A.SkSkbVerdict),
    ("sk_skb", P.SkSkb, None),
    ("sk_msg", P.SkMsg, A.SkMsgVerdict),
    ("lirc_mode2", P.LircMode2, A.LircMode2),
    ("flow_dissector", P.FlowDissector, A.FlowDissector),
    ("cgroup_skb/ingress", P.CgroupSkb, A.CgroupInetIngress),
    ("cgroup_skb/egress", P.CgroupSkb, A.CgroupInetEgress),
    ("cgroup/skb", P.CgroupSkb, None),
    ("cgroup/sock_create", P.CgroupSock, A.CgroupInetSockCreate),
    ("cgroup/sock_release", P.CgroupSock, A.CgroupInetSockRelease),
    ("cgroup/sock", P.CgroupSock, A.CgroupInetSockCreate),
    ("cgroup/post_bind4", P.CgroupSock, A.CgroupInet4PostBind),
    ("cgroup/post_bind6", P.CgroupSock, A.CgroupInet6PostBind),
    ("cgroup/bind4", P.CgroupSockAddr, A.CgroupInet4Bind),
    ("cgroup/bind6", P.CgroupSockAddr, A.CgroupInet6Bind),
    ("cgroup/connect4", P.CgroupSockAddr, A.CgroupInet4Connect),
    ("cgroup/connect6", P.CgroupSockAddr, A.CgroupInet6Connect),
    ("cgroup/connect_unix", P.CgroupSockAddr, A.CgroupUnixConnect),
    ("cgroup/sendmsg4", P.CgroupSockAddr, A.CgroupUdp4Sendmsg),
    ("cgroup/sendmsg6", P.CgroupSockAddr, A.CgroupUdp6Sendmsg),
    ("cgroup/sendmsg_unix", P.CgroupSockAddr, A.CgroupUnixSendmsg),
    ("cgroup/recvmsg4", P.CgroupSockAddr, A.CgroupUdp4Recvmsg),
    ("cgroup/recvmsg6", P.CgroupSockAddr, A.CgroupUdp6Recvmsg),
    ("cgroup/recvmsg_unix", P.CgroupSockAddr, A.CgroupUnixRecvmsg),
    ("cgroup/getpeername4", P.CgroupSockAddr, A.CgroupInet4Getpeername),
    ("cgroup/getpeername6", P.CgroupSockAddr, A.CgroupInet6Getpeername),
    ("cgroup/getpeername_unix", P.CgroupSockAddr, A.CgroupUnixGetpeername),
    ("cgroup/getsockname4", P.CgroupSockAddr, A.CgroupInet4Getsockname),
    ("cgroup/getsockname6", P.CgroupSockAddr, A.CgroupInet6Getsockname),
    ("cgroup/getsockname_unix", P.CgroupSockAddr, A.CgroupUnixGetsockname),
    ("cgroup/sysctl", P.CgroupSysctl, A.CgroupSysctl),
    ("cgroup/getsockopt", P.CgroupSockopt, A.CgroupGetsockopt),
    ("cgroup/setsockopt", P.CgroupSockopt, A.CgroupSetsockopt),
    ("cgroup/dev", P.CgroupDevice, A.CgroupDevice),
    ("struct_ops+", P.StructOps, None),
    ("struct_ops.s+", P.StructOps, None),
    ("sk_lookup", P.SkLookup, A.SkLookup),
    ("netfilter", P.Netfilter, A.Netfilter),
)


def _matches(pattern: str, section: str) -> bool:
    if pattern.endswith("/"):
        return section.startswith(pattern)
    if pattern.endswith("+"):
        base = pattern[:-1]
        return section == base or section.startswith(base + "/")
    return section == pattern


@functools.lru_cache(maxsize=512)
def program_type(section: str) -> tuple[P, A | None]:
    """``(program type, expected attach type)`` for a program in ``section``."""
    for pattern, prog_type, attach_type in CONVENTIONS:
        if _matches(pattern, section):
            return prog_type, attach_type
    for pattern, prog_type, attach_type in CONVENTIONS:  # libbpf 0.x: any prefix
        if section.startswith(pattern.rstrip("+")):
            return prog_type, attach_type
    return P.Unspec, None
