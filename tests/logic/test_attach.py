"""Attach specs as the CLI takes them, link pin names, and the program-type fit check."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.api.targets import CgroupTarget, TcTarget, TcxTarget, parse_attach
from bpfshare.errors import BpfshareError
from bpfshare.load.attach import check_fits, link_pin_path, target_from_link_pin
from bpfshare.spec import ProgramSpec
from bpfshare.types import AttachType, ProgType


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("tc:eth0:ingress", TcTarget("eth0", "ingress")),
        ("tc:veth-a:egress@blue", TcTarget("veth-a", "egress", "blue")),
        ("tcx:eth0:ingress@/run/netns/x", TcxTarget("eth0", "ingress", "/run/netns/x")),
        ("cgroup:/:egress", CgroupTarget("/", "egress")),
        ("cgroup:kubepods/burstable:connect4", CgroupTarget("kubepods/burstable", "connect4")),
    ],
)
def test_parse_attach(text: str, target: object) -> None:
    assert parse_attach(text) == target


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("xdp:eth0", "kind must be tc, tcx or cgroup"),
        ("tc:eth0", "expected tc:IFACE"),
        ("tc:eth0:sideways", "direction must be ingress or egress"),
        ("cgroup:/:teleport", "unknown cgroup attach type 'teleport'"),
        ("cgroup:egress", "expected cgroup:DIR:TYPE"),
    ],
)
def test_parse_attach_errors(text: str, words: str) -> None:
    with pytest.raises(BpfshareError, match=words):
        parse_attach(text)


@pytest.mark.parametrize(
    "target",
    [TcxTarget("eth0", "ingress", "/run/netns/x"), CgroupTarget("a/b.c/d", "egress"), CgroupTarget("/", "sock_create")],
)
def test_link_pin_name_is_one_component_and_reversible(target: TcxTarget | CgroupTarget) -> None:
    pin = link_pin_path(Path("/pins/prog"), target)
    assert pin.parent == Path("/pins/prog/links")
    assert "/" not in pin.name
    assert target_from_link_pin(pin.name) == target


def _spec(prog_type: ProgType, attach: AttachType | None = None) -> ProgramSpec:
    return ProgramSpec(name="p", section="s", type=prog_type, expected_attach_type=attach, instructions=b"")


def test_fit_accepts_matching_types() -> None:
    check_fits(_spec(ProgType.SchedCls), TcTarget("eth0", "ingress"))
    check_fits(_spec(ProgType.SchedCls, AttachType.TcxIngress), TcxTarget("eth0", "ingress"))
    check_fits(_spec(ProgType.CgroupSkb), CgroupTarget("/", "ingress"))
    check_fits(_spec(ProgType.CgroupSockAddr, AttachType.CgroupInet4Connect), CgroupTarget("/", "connect4"))


@pytest.mark.parametrize(
    ("spec", "target", "words"),
    [
        (_spec(ProgType.CgroupSkb), TcTarget("eth0", "ingress"), "tc needs a SchedCls program"),
        (_spec(ProgType.SchedCls), CgroupTarget("/", "egress"), "cgroup egress needs a CgroupSkb program"),
        (
            _spec(ProgType.CgroupSkb, AttachType.CgroupInetEgress),
            CgroupTarget("/", "ingress"),
            "built for CgroupInetEgress, not CgroupInetIngress",
        ),
    ],
)
def test_fit_refuses_mismatches(spec: ProgramSpec, target: object, words: str) -> None:
    with pytest.raises(BpfshareError, match=words):
        check_fits(spec, target)  # type: ignore[arg-type]


def test_program_dirs_are_bpffs_safe_and_reversible(tmp_path: Path) -> None:
    from bpfshare.engine.host_kernel import HostKernel
    from bpfshare.engine.layout import Layout

    layout = Layout(tmp_path)
    assert layout.program_dir("count.ingress.v2").name == "count_ingress_v2"  # bpffs refuses '.'
    layout.program_dir("count.ingress.v2").mkdir(parents=True)
    layout.program_dir("plain").mkdir()
    assert layout.program_names(HostKernel()) == ["count.ingress.v2", "plain"]


def test_stale_temporary_pins_are_found(tmp_path: Path) -> None:
    import os

    from bpfshare.engine.host_kernel import HostKernel
    from bpfshare.engine.layout import Layout

    layout = Layout(tmp_path)
    links = layout.program_dir("p") / "links"
    links.mkdir(parents=True)
    dead = 2**22 + 12345  # above any pid_max: no such process
    for name in (f"program_tmp{dead}", "program"):
        (layout.program_dir("p") / name).touch()
    (links / f"cgroup:a:egress_tmp{dead}").touch()
    (links / f"link_tmp{os.getpid()}").touch()  # even our own pid: a restarted container reuses pids
    (links / "tmp_but_not_temporary").touch()
    found = sorted(p.name for p in layout.temporary_pins(HostKernel()))
    assert found == [f"cgroup:a:egress_tmp{dead}", f"link_tmp{os.getpid()}", f"program_tmp{dead}"]
