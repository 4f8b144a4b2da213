"""Attaching never detaches what it cannot prove defunct (issue 11), on the real kernel."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from bpfshare.api.targets import TcxTarget
from bpfshare.errors import KernelError
from bpfshare.kernel.links import Link, query_tcx
from bpfshare.kernel.netns import enter_netns, ifindex
from bpfshare.load.attach import attach_program, link_pin_path
from bpfshare.load.loader import load_program
from bpfshare.object import read_collection
from tests.fixtures.netenv import NetnsPair

pytestmark = pytest.mark.kernel


def test_a_refused_setns_leaves_a_running_link_pinned(
    bpffs: Path, bpf_objects, netns_pair: NetnsPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = read_collection(bpf_objects["flow_counter"])
    loaded = load_program(collection, "count_tcx_ingress", pin_root=bpffs, pin_dir=bpffs / "p")
    target = TcxTarget(netns_pair.if_b, "ingress", netns_pair.ns_b)
    try:
        first = attach_program(loaded.program, loaded.spec, target, bpffs / "p")

        def refused(name: str, netns: str | None = None) -> int:
            raise KernelError(f"setns into {netns}: Operation not permitted", errno.EPERM)

        monkeypatch.setattr("bpfshare.kernel.netns.ifindex", refused)
        with pytest.raises(KernelError, match="Operation not permitted"):
            attach_program(loaded.program, loaded.spec, target, bpffs / "p")
        monkeypatch.undo()

        pin = link_pin_path(bpffs / "p", target)
        assert pin.exists(), "the link was unpinned on an error that says nothing about the link"
        with Link.from_pin(pin) as link:
            assert link.info().id == first.link_id
        index = ifindex(target.interface, target.netns)
        with enter_netns(target.netns):
            assert query_tcx(index, target.attach_type).prog_ids == [loaded.program.info().id]
    finally:
        loaded.close()
