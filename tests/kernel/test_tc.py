"""tc (cls_bpf on clsact) and tcx (links) inside network namespaces, with real traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.errors import KernelError, TargetNotFoundError
from bpfshare.kernel.links import Link, LinkType
from bpfshare.kernel.maps import Map
from bpfshare.kernel.netns import enter_netns, ifindex
from bpfshare.kernel.programs import Program
from bpfshare.kernel.tc import attach_tc, detach_tc, list_tc_filters
from bpfshare.kernel.tcx import attach_tcx, list_tcx
from bpfshare.types import AttachType, ProgType
from tests.fixtures.netenv import NetnsPair, run, wait_for
from tests.kernel.asm import COUNTER_MAP, counter_spec, read_u64, returns, simple_spec, u32

pytestmark = pytest.mark.kernel


def counting_prog(counter: Map, name: str = "count") -> Program:
    spec = counter_spec(ProgType.SchedCls, ret=0, name=name)  # TC_ACT_OK / TCX_PASS
    return Program.load(spec, spec.instructions_with_fds({"counter": counter.fd}))


def count(counter: Map) -> int:
    return read_u64(counter.lookup(u32(0)))


def test_tc_ingress_counts_and_replaces_in_place(netns_pair: NetnsPair) -> None:
    p = netns_pair
    with Map.create(COUNTER_MAP) as counter, counting_prog(counter) as prog:
        attached = attach_tc(p.if_b, "ingress", prog, netns=p.ns_b, name="count_ingress")
        assert (attached.priority, attached.handle) == (1, 1)
        assert attached.prog_id == prog.info().id and attached.name == "count_ingress"
        assert attached.direct_action and attached.ifindex == ifindex(p.if_b, p.ns_b)
        shown = run("tc", "filter", "show", "dev", p.if_b, "ingress", netns=p.ns_b).stdout
        assert f"id {prog.info().id}" in shown and "direct-action" in shown

        p.send_udp(5)
        assert wait_for(lambda: count(counter) >= 5), count(counter)

        # Same priority/handle again: the filter is replaced, not doubled.
        with counting_prog(counter, "count_v2") as newer:
            replaced = attach_tc(p.if_b, "ingress", newer, netns=p.ns_b)
            filters = list_tc_filters(p.if_b, "ingress", p.ns_b)
            assert len(filters) == 1
            assert filters[0].prog_id == newer.info().id == replaced.prog_id
            assert filters[0].name == "count_v2"  # the program's name by default
            before = count(counter)
            p.send_udp(3)
            assert wait_for(lambda: count(counter) >= before + 3)

        # Another priority is another filter; detaching one leaves the other.
        attach_tc(p.if_b, "ingress", prog, priority=2, netns=p.ns_b)
        addresses = [(f.priority, f.handle) for f in list_tc_filters(p.if_b, "ingress", p.ns_b)]
        assert addresses == [(1, 1), (2, 1)]
        assert detach_tc(p.if_b, "ingress", 1, 1, p.ns_b) is True
        assert detach_tc(p.if_b, "ingress", 1, 1, p.ns_b) is False
        assert [f.priority for f in list_tc_filters(p.if_b, "ingress", p.ns_b)] == [2]
        assert list_tc_filters(p.if_b, "egress", p.ns_b) == []


def test_tc_egress_and_existing_clsact(netns_pair: NetnsPair) -> None:
    p = netns_pair
    run("tc", "qdisc", "add", "dev", p.if_a, "clsact", netns=p.ns_a)  # made by someone else: fine
    with Map.create(COUNTER_MAP) as counter, counting_prog(counter) as prog:
        attach_tc(p.if_a, "egress", prog, netns=p.ns_a)
        p.send_udp(4)
        assert wait_for(lambda: count(counter) >= 4)
        assert list_tc_filters(p.if_a, "ingress", p.ns_a) == []


def test_tc_refuses_ingress_qdisc(netns_pair: NetnsPair) -> None:
    p = netns_pair
    run("tc", "qdisc", "add", "dev", p.if_a, "ingress", netns=p.ns_a)
    code = returns(0)
    with (
        Program.load(simple_spec(ProgType.SchedCls, code), code) as prog,
        pytest.raises(KernelError, match="'ingress' qdisc where clsact is needed"),
    ):
        attach_tc(p.if_a, "ingress", prog, netns=p.ns_a)


def test_tc_missing_targets(netns_pair: NetnsPair) -> None:
    code = returns(0)
    with Program.load(simple_spec(ProgType.SchedCls, code), code) as prog:
        with pytest.raises(TargetNotFoundError, match="interface 'bpfshare-nope0' not found in network"):
            attach_tc("bpfshare-nope0", "ingress", prog, netns=netns_pair.ns_a)
        with pytest.raises(TargetNotFoundError, match="network namespace 'bpfshare-nope' not found"):
            attach_tc(netns_pair.if_a, "ingress", prog, netns="bpfshare-nope")
        with pytest.raises(TargetNotFoundError, match="host network namespace"):
            list_tc_filters(netns_pair.if_a, "ingress")
        with pytest.raises(ValueError, match="ingress or egress"):
            attach_tc(netns_pair.if_a, "sideways", prog, netns=netns_pair.ns_a)  # type: ignore[arg-type]


def test_tcx_link_counts_updates_and_pins(netns_pair: NetnsPair, bpffs: Path) -> None:
    p = netns_pair
    with Map.create(COUNTER_MAP) as counter, counting_prog(counter) as prog:
        link = attach_tcx(p.if_b, "ingress", prog, netns=p.ns_b)
        with link:
            info = link.info()
            assert info.type is LinkType.Tcx and info.attach_type is AttachType.TcxIngress
            assert info.ifindex == ifindex(p.if_b, p.ns_b) and info.prog_id == prog.info().id
            query = list_tcx(p.if_b, "ingress", p.ns_b)
            assert query.prog_ids == [prog.info().id] and query.link_ids == [info.id]
            link.pin(bpffs / "tcx")

        p.send_udp(5)  # our fd is closed: the pin keeps it attached
        assert wait_for(lambda: count(counter) >= 5), count(counter)

        with Link.from_pin(bpffs / "tcx") as pinned, counting_prog(counter, "count_v2") as newer:
            pinned.update(newer)
            assert list_tcx(p.if_b, "ingress", p.ns_b).prog_ids == [newer.info().id]
            pinned.detach()
            assert list_tcx(p.if_b, "ingress", p.ns_b).prog_ids == []


def test_tcx_link_create_needs_the_netns(netns_pair: NetnsPair) -> None:
    """An ifindex names a device only in its own namespace: Link.create runs inside it."""
    p = netns_pair
    code = returns(0)
    with Program.load(simple_spec(ProgType.SchedCls, code), code) as prog:
        index = ifindex(p.if_b, p.ns_b)
        with enter_netns(p.ns_b), Link.create(prog, 0, AttachType.TcxEgress, target_ifindex=index) as link:
            assert link.info().ifindex == index
        with pytest.raises(TargetNotFoundError):
            attach_tcx("bpfshare-nope0", "egress", prog, netns=p.ns_b)


def test_the_kernels_tcx_program_limit_is_named(netns_pair: NetnsPair, bpffs: Path) -> None:
    """bpf_mprog holds 63 programs per hook (64 slots, one ends the array) and answers ERANGE
    beyond: the message says so, naming the interface, the direction and the namespace."""
    from bpfshare.api.targets import TcxTarget
    from bpfshare.kernel.links import TCX_MAX_PROGS
    from bpfshare.load.attach import attach_program

    p = netns_pair
    code = returns(0)
    specs = [simple_spec(ProgType.SchedCls, code, name=f"p{i}") for i in range(TCX_MAX_PROGS + 1)]
    programs = [Program.load(s, code) for s in specs]
    links: list[Link] = []
    try:
        links = [attach_tcx(p.if_a, "ingress", prog, netns=p.ns_a) for prog in programs[:-1]]
        with pytest.raises(KernelError) as exc:
            attach_program(programs[-1], specs[-1], TcxTarget(p.if_a, "ingress", p.ns_a), bpffs / "prog")
        assert str(exc.value).startswith(
            f"{p.if_a} ingress in network namespace {p.ns_a!r} already holds 63 tcx programs, the kernel's limit "
            "(BPF_LINK_CREATE: "
        )
        assert "ERANGE" in str(exc.value)
        assert not list((bpffs / "prog" / "links").glob("*"))
    finally:
        for link in links:
            link.close()
        for prog in programs:
            prog.close()


def test_tc_detach_of_an_interface_that_goes_meanwhile_is_nothing_to_remove(
    netns_pair: NetnsPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod's veth removed by CNI between the filter lookup and the delete (the kernel answers
    ENODEV): the filter went with the interface, which is no error (bench/pods.py saw it in churn)."""
    from bpfshare.kernel import tc

    code = returns(0)
    with Program.load(simple_spec(ProgType.SchedCls, code), code) as prog:
        attach_tc(netns_pair.if_b, "ingress", prog, netns=netns_pair.ns_b)
    listed = tc._filters

    def listed_then_gone(*args: object, **kwargs: object) -> object:
        found = list(listed(*args, **kwargs))  # type: ignore[arg-type]
        run("nsenter", f"--net=/run/netns/{netns_pair.ns_b}", "ip", "link", "del", netns_pair.if_b)
        return iter(found)

    monkeypatch.setattr(tc, "_filters", listed_then_gone)
    assert detach_tc(netns_pair.if_b, "ingress", 1, 1, netns=netns_pair.ns_b) is False
