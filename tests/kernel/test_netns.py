"""Network namespaces: naming, entering (and always leaving), interface lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bpfshare.errors import TargetNotFoundError
from bpfshare.kernel.netns import enter_netns, ifindex, netns_path
from tests.fixtures.netenv import NetnsPair

pytestmark = pytest.mark.kernel


def current_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_netns_path(netns_pair: NetnsPair) -> None:
    assert netns_path(netns_pair.ns_a) == Path("/run/netns") / netns_pair.ns_a
    assert netns_path(f"/run/netns/{netns_pair.ns_a}") == Path("/run/netns") / netns_pair.ns_a
    assert netns_path("/proc/self/ns/net") == Path("/proc/self/ns/net")
    with pytest.raises(TargetNotFoundError, match="'bpfshare-nope' not found"):
        netns_path("bpfshare-nope")
    with pytest.raises(TargetNotFoundError, match="absolute path"):
        netns_path("relative/path")


def test_enter_and_restore(netns_pair: NetnsPair) -> None:
    host = current_netns()
    with enter_netns(netns_pair.ns_a):
        inside = current_netns()
        assert inside != host
        assert ifindex(netns_pair.if_a) > 0
    assert current_netns() == host
    with pytest.raises(RuntimeError), enter_netns(netns_pair.ns_b):
        assert current_netns() not in (host, inside)
        raise RuntimeError("boom")
    assert current_netns() == host
    with enter_netns(None):
        assert current_netns() == host


def test_ifindex_errors(netns_pair: NetnsPair) -> None:
    assert ifindex(netns_pair.if_b, netns_pair.ns_b) > 0
    with pytest.raises(TargetNotFoundError) as exc:
        ifindex(netns_pair.if_b, netns_pair.ns_a)  # the other end's namespace
    assert netns_pair.if_b in str(exc.value) and netns_pair.ns_a in str(exc.value)
    with pytest.raises(TargetNotFoundError, match="host network namespace"):
        ifindex(netns_pair.if_b)
    with pytest.raises(TargetNotFoundError, match="network namespace 'bpfshare-nope' not found"):
        ifindex("lo", "bpfshare-nope")


def test_a_name_longer_than_ifnamsiz_is_too_long_not_missing(netns_pair: NetnsPair) -> None:
    from bpfshare.errors import InvalidTargetError
    from bpfshare.kernel.tc import list_tc_filters
    from bpfshare.kernel.tcx import list_tcx

    long_name = netns_pair.if_a + "x" * (16 - len(netns_pair.if_a))  # 16 characters
    assert len(long_name) == 16
    expected = f"interface {long_name!r} is 16 characters, longer than the kernel's 15 characters (IFNAMSIZ)"
    for lookup in (
        lambda: ifindex(long_name, netns_pair.ns_a),
        lambda: list_tc_filters(long_name, "ingress", netns_pair.ns_a),
        lambda: list_tcx(long_name, "ingress", netns_pair.ns_a),
        lambda: ifindex(long_name, "bpfshare-nope"),  # the name is wrong wherever it is looked for
    ):
        with pytest.raises(InvalidTargetError) as exc:
            lookup()
        assert str(exc.value) == expected
        assert isinstance(exc.value, TargetNotFoundError)  # such an interface cannot exist anywhere
    assert ifindex(netns_pair.if_a, netns_pair.ns_a) > 0
