"""The node engine (``bpfshare apply``) on objects with tail-call slots and programs it cannot load,
on the real kernel: a tc pipeline applied by its entry program runs through both tail calls on real
traffic; a BpfProgram naming a refused program of the same object is an Error naming why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.netenv import NetnsPair
from tests.integration.test_apply import Node, bpftool, tc_program
from tests.integration.test_sharing import filters_on

pytestmark = pytest.mark.kernel


def _u(field: object) -> int:
    """A number bpftool printed: as such (BTF-described) or as a list of little-endian hex bytes."""
    if isinstance(field, int):
        return field
    raw = bytes(int(b, 16) for b in field)  # type: ignore[attr-defined]
    return int.from_bytes(raw, "little")


@pytest.fixture
def node(bpffs: Path, tmp_path: Path) -> Node:
    return Node(bpffs / "bpfshare", tmp_path)


def test_a_tail_call_pipeline_applied_by_its_entry_program(node: Node, bpf_objects, netns_pair: NetnsPair) -> None:
    pipeline = tc_program(bpf_objects["tail_calls"], netns_pair, name="pipeline", program="entry", maps={})
    refused = tc_program(bpf_objects["mixed_object"], netns_pair, name="cc", program="cc_init", maps={})
    status = node.apply(pipeline, refused, ok=False)
    entry = status["pipeline"]
    assert entry["phase"] == "Ready", status
    assert status["cc"]["phase"] == "Error"
    assert "spec.program: program 'cc_init' cannot be loaded" in status["cc"]["message"]
    assert filters_on(netns_pair) == [entry["programId"]]
    prog_dir = node.root / "programs" / "pipeline"
    jumps = bpftool("map", "dump", "pinned", str(prog_dir / "maps" / "jumps"))
    slots = {_u(e["key"]): bpftool("prog", "show", "id", str(_u(e["value"])))["name"] for e in jumps}  # type: ignore
    assert slots == {0: "stage_one", 1: "stage_two"}

    netns_pair.send_udp(3)
    trail = bpftool("map", "dump", "pinned", str(prog_dir / "maps" / "trail"))
    bits = _u(trail[0]["value"])  # type: ignore[index]
    assert bits == 1 | 2 | 4  # entry, then stage_one, then stage_two ran on the packets

    gone = node.delete(pipeline, refused)
    assert gone["pipeline"] == {"removed": True}
    assert filters_on(netns_pair) == []
    assert not prog_dir.exists()
