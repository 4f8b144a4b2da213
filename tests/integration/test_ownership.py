"""bpfshare owns exactly what it claims (issue 11), through `bpfshare apply/delete -f` on the real kernel."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.netenv import NetnsPair, run
from tests.integration.test_apply import Node, bpfmap, cgroup_program, tc_program
from tests.integration.test_sharing import TC_INGRESS, bpfshare, bpftool, counters, filters_on

pytestmark = pytest.mark.kernel


@pytest.fixture
def node(bpffs: Path, tmp_path: Path) -> Node:
    return Node(bpffs / "bpfshare", tmp_path)


def map_id(pin: Path) -> int:
    return int(bpftool("map", "show", "pinned", str(pin))["id"])  # type: ignore[index]


def another_tools_map(pin: Path, name: str) -> None:
    """An Array(4, 8, 4) that bpftool creates and pins: a map bpfshare did not make."""
    spec = ["type", "array", "key", "4", "value", "8", "entries", "4", "name", name]
    subprocess.run(["bpftool", "map", "create", str(pin), *spec], check=True)


def put(pin: Path, key: int, value: int) -> None:
    args = [f"{b}" for b in key.to_bytes(4, "little")], [f"{b}" for b in value.to_bytes(8, "little")]
    subprocess.run(["bpftool", "map", "update", "pinned", str(pin), "key", *args[0], "value", *args[1]], check=True)


def test_two_bpfmaps_on_one_pin_and_deleting_the_refused_one_keeps_the_holders_map(node: Node) -> None:
    holder, twin = bpfmap("a", pinName="shared", reclaimPolicy="Retain"), bpfmap("b", pinName="shared")
    status = node.apply(holder, twin, ok=False)
    pin = node.root / "maps" / "shared"
    assert status["a"]["phase"] == "Ready"
    assert status["b"]["phase"] == "Error" and f"pin {pin} is held by BpfMap a" in status["b"]["message"]
    put(pin, 1, 77)
    node.delete(twin)
    assert map_id(pin) == status["a"]["mapId"] and counters(pin)[1] == 77
    again = node.apply(holder)
    assert again["a"]["mapId"] == status["a"]["mapId"] and "contents lost" not in again["a"]["message"]
    node.delete(holder)


def test_a_pin_name_change_moves_the_same_map_under_a_running_program(
    node: Node, bpf_objects, netns_pair: NetnsPair
) -> None:
    prog = tc_program(bpf_objects["flow_counter"], netns_pair)
    first = node.apply(bpfmap(), prog)
    old_pin = node.root / "maps" / "flow-counts"
    netns_pair.send_udp(3)
    before = counters(old_pin)[TC_INGRESS]
    moved = node.apply(bpfmap(pinName="renamed"), prog)
    new_pin = node.root / "maps" / "renamed"
    assert moved["flow-counts"]["mapId"] == first["flow-counts"]["mapId"] == map_id(new_pin)
    assert not old_pin.exists()
    assert counters(new_pin)[TC_INGRESS] >= before >= 3, "the contents moved with the map"
    assert moved["count-ingress"]["maps"] == {"shared_counts": first["flow-counts"]["mapId"]}
    node.delete(bpfmap(pinName="renamed"), prog)
    assert not new_pin.exists()


def test_an_adopted_map_is_pinned_again_from_its_id_though_its_name_is_the_other_tools(
    node: Node, bpffs: Path, bpf_objects, netns_pair: NetnsPair
) -> None:
    theirs = bpffs / "theirs"
    another_tools_map(theirs, "their_counts")
    res, prog = bpfmap(adopt=str(theirs)), tc_program(bpf_objects["flow_counter"], netns_pair)
    first = node.apply(res, prog)
    ours = node.root / "maps" / "flow-counts"
    ours.unlink()
    again = node.apply(res, prog)
    assert again["flow-counts"]["mapId"] == first["flow-counts"]["mapId"] == map_id(ours)
    assert again["count-ingress"]["programId"] == first["count-ingress"]["programId"], "no reload onto a new map"
    assert "Repinned" in node.last_events
    node.delete(res, prog)
    assert theirs.exists(), "the adopted pin is never removed"


def test_a_changed_adopt_is_reported_not_swapped(node: Node, bpffs: Path) -> None:
    for name in ("one", "two"):
        another_tools_map(bpffs / name, name)
    first = node.apply(bpfmap(adopt=str(bpffs / "one")))
    changed = node.apply(bpfmap(adopt=str(bpffs / "two")), ok=False)
    assert changed["flow-counts"]["phase"] == "Error"
    assert f"spec.adopt changed to {bpffs / 'two'}" in changed["flow-counts"]["message"]
    assert map_id(node.root / "maps" / "flow-counts") == first["flow-counts"]["mapId"]
    node.delete(bpfmap(adopt=str(bpffs / "one")))


def test_a_foreign_tc_filter_is_neither_replaced_nor_removed(
    node: Node, bpffs: Path, bpf_objects, netns_pair: NetnsPair
) -> None:
    run("tc", "qdisc", "add", "dev", netns_pair.if_b, "clsact", netns=netns_pair.ns_b)
    iproute2 = ["nsenter", f"--net=/run/netns/{netns_pair.ns_b}", "tc", "filter", "add", "dev", netns_pair.if_b]
    iproute2 += ["ingress", "prio", "1", "handle", "1", "bpf", "da", "obj", str(bpf_objects["flow_counter_tc"])]
    iproute2 += ["sec", "classifier/ingress"]
    subprocess.run(iproute2, check=True, capture_output=True, env={**os.environ, "TC_BPF_MNT": str(bpffs)})
    [theirs] = filters_on(netns_pair)
    prog = tc_program(bpf_objects["flow_counter"], netns_pair)
    status = node.apply(bpfmap(), prog, ok=False)
    message = status["count-ingress"]["message"]
    assert status["count-ingress"]["phase"] == "Error"
    assert "priority 1 handle 1 is held by another tool" in message and f"running program {theirs}" in message
    assert filters_on(netns_pair) == [theirs]
    node.delete(bpfmap(), prog)
    assert filters_on(netns_pair) == [theirs]


def test_two_bpfprograms_on_one_slot_do_not_replace_each_other(node: Node, bpf_objects, netns_pair: NetnsPair) -> None:
    a = tc_program(bpf_objects["flow_counter"], netns_pair, name="a")
    b = tc_program(bpf_objects["flow_counter"], netns_pair, name="b", program="count_egress")
    first = node.apply(bpfmap(), a, b, ok=False)
    assert first["b"]["phase"] == "Error" and "held by BpfProgram a" in first["b"]["message"]
    second = node.apply(bpfmap(), a, b, ok=False)
    assert filters_on(netns_pair) == [first["a"]["programId"]] == [second["a"]["programId"]]
    node.delete(bpfmap(), a, b)
    assert filters_on(netns_pair) == []


def test_a_second_missing_interface_attaches_nothing_and_delete_leaves_nothing(
    node: Node, bpf_objects, netns_pair: NetnsPair
) -> None:
    attach = {
        "tc": {
            "interfaces": [netns_pair.if_b, "nosuch0", "nosuch1"],
            "direction": "ingress",
            "networkNamespace": netns_pair.ns_b,
        }
    }
    prog = tc_program(bpf_objects["flow_counter"], netns_pair, attach=attach)
    status = node.apply(bpfmap(), prog, ok=False)
    assert "nosuch0" in status["count-ingress"]["message"] and "nosuch1" in status["count-ingress"]["message"]
    assert filters_on(netns_pair) == []
    node.delete(bpfmap(), prog)
    assert filters_on(netns_pair) == []
    programs = node.root / "programs"
    assert not programs.exists() or list(programs.iterdir()) == []


def test_maps_pinned_by_name_are_shown_by_get_and_removed_with_their_program(
    node: Node, bpf_objects, netns_pair: NetnsPair
) -> None:
    prog = tc_program(bpf_objects["flow_counter_legacy"], netns_pair, maps={})
    status = node.apply(prog)
    assert status["count-ingress"]["phase"] == "Ready"
    pinned = node.root / "tc" / "globals" / "shared_counts"
    assert pinned.exists()
    shown = json.loads(bpfshare("get", "programs", "-o", "json", "--pin-root", str(node.root)).stdout)
    assert str(pinned) in shown["programs"][0]["pins"]
    node.delete(prog)
    assert not pinned.exists()


def test_adopting_a_pin_that_does_not_exist_yet_waits_and_the_rest_converges(node: Node, bpffs: Path) -> None:
    status = node.apply(bpfmap("waits", pinName="waits", adopt=str(bpffs / "later")), bpfmap())
    assert status["waits"]["phase"] == "Pending" and "waiting for" in status["waits"]["message"]
    assert status["flow-counts"]["phase"] == "Ready"
    assert "Traceback" not in node.last_events
    node.delete(bpfmap("waits", pinName="waits", adopt=str(bpffs / "later")), bpfmap())


def test_bytecode_that_would_block_or_never_end_is_refused(
    node: Node, tmp_path: Path, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    fifo = tmp_path / "fifo.o"
    os.mkfifo(fifo)
    status = node.apply(
        bpfmap(),
        tc_program(Path("/dev/zero"), netns_pair, name="zero"),
        cgroup_program(fifo, cgroup_dir, name="fifo"),
        ok=False,
    )
    assert "not a regular file (a character device)" in status["zero"]["message"]
    assert "not a regular file (a FIFO)" in status["fifo"]["message"]
    assert status["flow-counts"]["phase"] == "Ready"
    node.delete(bpfmap())


def test_get_shows_the_maps_this_node_holds_with_their_kernel_ids(node: Node) -> None:
    status = node.apply(bpfmap(), bpfmap("hash", pinName="hash", type="Hash", maxEntries=64, flags=["NoPrealloc"]))
    shown = json.loads(bpfshare("get", "maps", "-o", "json", "--pin-root", str(node.root)).stdout)["maps"]
    assert [(m["pinName"], m["mapId"], m["type"], m["maxEntries"], m["flags"]) for m in shown] == [
        ("flow-counts", status["flow-counts"]["mapId"], "Array", 4, []),
        ("hash", status["hash"]["mapId"], "Hash", 64, ["NoPrealloc"]),
    ]
    node.delete(bpfmap(), bpfmap("hash", pinName="hash", type="Hash", maxEntries=64, flags=["NoPrealloc"]))


def test_a_map_over_the_memory_budget_is_refused_before_the_kernel(node: Node) -> None:
    status = node.apply(bpfmap("huge", pinName="huge", maxEntries=2**31 - 1), ok=False)
    assert "more than the map memory budget" in status["huge"]["message"]
    assert not (node.root / "maps" / "huge").exists()
