"""The CLI's ``--attach SPEC`` (api/targets.py) beyond test_attach.py: every refusal quotes the SPEC
the user typed, a target's key is itself a SPEC that parses back to the target (status shows keys;
users paste them into ``bpfshare load --attach``), and keys tell apart what the kernel tells apart."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfshare.api.targets import CgroupTarget, TcTarget, TcxTarget, parse_attach
from bpfshare.errors import BpfshareError
from bpfshare.types import CGROUP_ATTACH_TYPES, AttachType


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "kind must be tc, tcx or cgroup"),
        ("eth0", "kind must be tc, tcx or cgroup"),
        ("TC:eth0:ingress", "kind must be tc, tcx or cgroup"),  # kinds are lowercase, as in the CRD
        ("tc:", "expected tc:IFACE:ingress|egress[@NETNS]"),
        ("tc::ingress", "expected tc:IFACE:ingress|egress[@NETNS]"),
        ("tc:eth0:", "expected tc:IFACE:ingress|egress[@NETNS]"),
        ("tcx:eth0", "expected tcx:IFACE:ingress|egress[@NETNS]"),
        ("tcx:eth0:Ingress", "direction must be ingress or egress, not 'Ingress'"),
        ("tc:eth0:ingress:extra", "direction must be ingress or egress, not 'extra'"),
        ("cgroup:", "expected cgroup:DIR:TYPE"),
        ("cgroup::egress", "expected cgroup:DIR:TYPE"),
        ("cgroup:/:", "expected cgroup:DIR:TYPE"),
    ],
)
def test_refusals_quote_the_spec(spec: str, words: str) -> None:
    with pytest.raises(BpfshareError) as info:
        parse_attach(spec)
    assert str(info.value).startswith(f"attach {spec!r}: ")
    assert words in str(info.value)


def test_an_unknown_cgroup_type_lists_the_known_ones() -> None:
    with pytest.raises(BpfshareError) as info:
        parse_attach("cgroup:/:egress6")
    message = str(info.value)
    assert "unknown cgroup attach type 'egress6'" in message
    assert all(name in message for name in CGROUP_ATTACH_TYPES)


def test_defaults_and_namespaces() -> None:
    tc = parse_attach("tc:eth0:ingress")
    assert isinstance(tc, TcTarget) and (tc.netns, tc.priority, tc.handle) == (None, 1, 1)
    assert parse_attach("tc:eth0:ingress@").netns is None  # an empty namespace is the host's
    assert parse_attach("tcx:eth0:egress@/proc/1/ns/net") == TcxTarget("eth0", "egress", "/proc/1/ns/net")
    # The cgroup directory may itself contain ':' (the type is after the last one).
    assert parse_attach("cgroup:/pods/a:b:connect6") == CgroupTarget("/pods/a:b", "connect6")


def test_attach_types_of_tcx_and_cgroup_targets() -> None:
    assert parse_attach("tcx:eth0:ingress").attach_type is AttachType.TcxIngress  # type: ignore[union-attr]
    assert parse_attach("tcx:eth0:egress").attach_type is AttachType.TcxEgress  # type: ignore[union-attr]
    for name, attach_type in CGROUP_ATTACH_TYPES.items():
        assert parse_attach(f"cgroup:/:{name}").attach_type is attach_type  # type: ignore[union-attr]


NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789._-"
IFACES = st.text(NAME_CHARS, min_size=1, max_size=15)  # IFNAMSIZ - 1; never ':' '/' or '@'
NETNS = st.one_of(st.none(), st.text(NAME_CHARS, min_size=1, max_size=20), st.just("/run/netns/x-1"))
DIRECTIONS = st.sampled_from(["ingress", "egress"])
CGROUP_DIRS = st.builds(
    lambda root, parts: root + "/".join(parts),
    st.sampled_from(["", "/"]),
    st.lists(st.text(NAME_CHARS + ":", min_size=1, max_size=8).filter(lambda p: p not in (".", "..")), max_size=3),
).filter(bool)
TARGETS = st.one_of(
    st.builds(TcTarget, IFACES, DIRECTIONS, NETNS),
    st.builds(TcxTarget, IFACES, DIRECTIONS, NETNS),
    st.builds(CgroupTarget, CGROUP_DIRS, st.sampled_from(sorted(CGROUP_ATTACH_TYPES))),
)


@settings(max_examples=150, deadline=None, database=None)
@given(target=TARGETS)
def test_a_targets_key_is_a_spec_that_parses_back_to_it(target: TcTarget | TcxTarget | CgroupTarget) -> None:
    assert parse_attach(target.key) == target


@settings(max_examples=150, deadline=None, database=None)
@given(a=TARGETS, b=TARGETS)
def test_different_targets_have_different_keys(
    a: TcTarget | TcxTarget | CgroupTarget, b: TcTarget | TcxTarget | CgroupTarget
) -> None:
    """Keys identify attachments in status and in the engine's records: two targets the kernel
    treats as different hooks (kind, interface, direction, namespace, cgroup, type) never share one."""
    assert (a.key == b.key) == (a == b)


def test_tc_and_tcx_on_the_same_hook_are_different_attachments() -> None:
    assert TcTarget("eth0", "ingress").key != TcxTarget("eth0", "ingress").key
    assert TcTarget("eth0", "ingress").key != TcTarget("eth0", "ingress", "blue").key
    assert TcTarget("eth0", "ingress").key == "tc:eth0:ingress"
    assert TcxTarget("eth0", "egress", "blue").key == "tcx:eth0:egress@blue"
    assert CgroupTarget("/", "egress").key == "cgroup:/:egress"
