"""Program types and expected attach types from section names (libbpf's conventions)."""

from __future__ import annotations

import pytest

from bpfshare.object import program_type, read_collection
from bpfshare.types import AttachType as A
from bpfshare.types import ProgType as P
from tests.fixtures.objects import CompileBpf

CASES: list[tuple[str, P, A | None]] = [
    ("tc", P.SchedCls, None),
    ("classifier", P.SchedCls, None),
    ("action", P.SchedAct, None),
    ("tc/ingress", P.SchedCls, A.TcxIngress),
    ("tc/egress", P.SchedCls, A.TcxEgress),
    ("tcx/ingress", P.SchedCls, A.TcxIngress),
    ("tcx/egress", P.SchedCls, A.TcxEgress),
    ("cgroup_skb/ingress", P.CgroupSkb, A.CgroupInetIngress),
    ("cgroup_skb/egress", P.CgroupSkb, A.CgroupInetEgress),
    ("cgroup/skb", P.CgroupSkb, None),
    ("cgroup/sock", P.CgroupSock, A.CgroupInetSockCreate),
    ("cgroup/sock_create", P.CgroupSock, A.CgroupInetSockCreate),
    ("cgroup/sock_release", P.CgroupSock, A.CgroupInetSockRelease),
    ("cgroup/post_bind4", P.CgroupSock, A.CgroupInet4PostBind),
    ("cgroup/post_bind6", P.CgroupSock, A.CgroupInet6PostBind),
    ("cgroup/bind4", P.CgroupSockAddr, A.CgroupInet4Bind),
    ("cgroup/bind6", P.CgroupSockAddr, A.CgroupInet6Bind),
    ("cgroup/connect4", P.CgroupSockAddr, A.CgroupInet4Connect),
    ("cgroup/connect6", P.CgroupSockAddr, A.CgroupInet6Connect),
    ("cgroup/sendmsg4", P.CgroupSockAddr, A.CgroupUdp4Sendmsg),
    ("cgroup/sendmsg6", P.CgroupSockAddr, A.CgroupUdp6Sendmsg),
    ("cgroup/recvmsg4", P.CgroupSockAddr, A.CgroupUdp4Recvmsg),
    ("cgroup/recvmsg6", P.CgroupSockAddr, A.CgroupUdp6Recvmsg),
    ("cgroup/getpeername4", P.CgroupSockAddr, A.CgroupInet4Getpeername),
    ("cgroup/getpeername6", P.CgroupSockAddr, A.CgroupInet6Getpeername),
    ("cgroup/getsockname4", P.CgroupSockAddr, A.CgroupInet4Getsockname),
    ("cgroup/getsockname6", P.CgroupSockAddr, A.CgroupInet6Getsockname),
    ("cgroup/getsockopt", P.CgroupSockopt, A.CgroupGetsockopt),
    ("cgroup/setsockopt", P.CgroupSockopt, A.CgroupSetsockopt),
    ("cgroup/sysctl", P.CgroupSysctl, A.CgroupSysctl),
    ("cgroup/dev", P.CgroupDevice, A.CgroupDevice),
    ("sockops", P.SockOps, A.CgroupSockOps),
    ("xdp", P.Xdp, A.Xdp),
    ("xdp.frags", P.Xdp, A.Xdp),
    ("xdp/devmap", P.Xdp, A.XdpDevmap),
    ("socket", P.SocketFilter, None),
    ("sk_skb", P.SkSkb, None),
    ("sk_skb/stream_parser", P.SkSkb, A.SkSkbStreamParser),
    ("sk_skb/stream_verdict", P.SkSkb, A.SkSkbStreamVerdict),
    ("sk_msg", P.SkMsg, A.SkMsgVerdict),
    ("flow_dissector", P.FlowDissector, A.FlowDissector),
    ("sk_lookup", P.SkLookup, A.SkLookup),
    ("kprobe/do_exit", P.Kprobe, None),
    ("kretprobe/do_exit", P.Kprobe, None),
    ("kprobe.multi/do_*", P.Kprobe, A.TraceKprobeMulti),
    ("tracepoint/sched/sched_switch", P.Tracepoint, None),
    ("tp/sched/sched_switch", P.Tracepoint, None),
    ("raw_tracepoint/sched_switch", P.RawTracepoint, None),
    ("raw_tp/sched_switch", P.RawTracepoint, None),
    ("raw_tp.w/sched_switch", P.RawTracepointWritable, None),
    ("tp_btf/sched_switch", P.Tracing, A.TraceRawTp),
    ("fentry/do_exit", P.Tracing, A.TraceFentry),
    ("fexit/do_exit", P.Tracing, A.TraceFexit),
    ("lsm/file_open", P.Lsm, A.LsmMac),
    ("perf_event", P.PerfEvent, None),
    ("lwt_in", P.LwtIn, None),
    ("netfilter", P.Netfilter, A.Netfilter),
    # libbpf 0.x / iproute2: a known name followed by anything
    ("classifier/ingress", P.SchedCls, None),
    ("tc_prog", P.SchedCls, None),
    ("xdp_pass", P.Xdp, A.Xdp),
    ("cgroup_skb/ingress_v2", P.CgroupSkb, A.CgroupInetIngress),
    # unknown
    ("my_section", P.Unspec, None),
    ("kprobe", P.Kprobe, None),
]


@pytest.mark.parametrize(("section", "prog_type", "attach_type"), CASES)
def test_program_type(section: str, prog_type: P, attach_type: A | None) -> None:
    assert program_type(section) == (prog_type, attach_type)


def test_sections_in_an_object(compile_bpf: CompileBpf) -> None:
    """Every convention, through a compiled object: one program per section."""
    names = {f"prog_{i}": section for i, (section, _, _) in enumerate(CASES)}
    src = "".join(f'SEC("{sec}") int {name}(void *ctx) {{ return 0; }}\n' for name, sec in names.items())
    spec = read_collection(compile_bpf(src + 'char LICENSE[] SEC("license") = "Dual BSD/GPL";\n'))
    assert spec.license == "Dual BSD/GPL"
    for i, (section, prog_type, attach_type) in enumerate(CASES):
        if prog_type in (P.Unspec, P.StructOps):  # shown by inspect, refused by the loader
            refused = spec.refused_programs[f"prog_{i}"]
            assert (refused.section, refused.type, refused.expected_attach_type) == (section, prog_type, attach_type)
            continue
        prog = spec.programs[f"prog_{i}"]
        assert (prog.section, prog.type, prog.expected_attach_type) == (section, prog_type, attach_type)
        assert prog.license == "Dual BSD/GPL"


def test_several_programs_in_one_section_and_version(compile_bpf: CompileBpf) -> None:
    src = """
    SEC("cgroup/connect4") int a(struct bpf_sock_addr *ctx) { return 1; }
    SEC("cgroup/connect4") int b(struct bpf_sock_addr *ctx) { return ctx->user_port == 53; }
    SEC("cgroup/connect4") int c(struct bpf_sock_addr *ctx) { return 0; }
    __u32 _version SEC("version") = 0x060c00;
    """
    spec = read_collection(compile_bpf(src))
    assert list(spec.programs) == ["a", "b", "c"]
    assert spec.kernel_version == 0x060C00
    assert spec.license == ""
    assert {p.kernel_version for p in spec.programs.values()} == {0x060C00}
    with pytest.raises(KeyError, match="several programs"):
        spec.program("cgroup/connect4")
    assert spec.program("b").instructions != spec.program("a").instructions
