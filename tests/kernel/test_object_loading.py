"""Loading from objects that hold more than bpfshare can load, and what objects initialise in maps:
per-program loading, tail calls through initial prog array slots, inner maps put in map-in-map
slots, iproute2 custom pinning through a private bpf_pinning file."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bpfshare.errors import BpfshareError, UnsupportedError, VerifierError
from bpfshare.kernel.maps import Map
from bpfshare.kernel.programs import Program
from bpfshare.load.bpf_pinning import ENV_VAR
from bpfshare.load.loader import load_program
from bpfshare.object import read_collection
from tests.fixtures.bpftool import libbpf_loadall, xlated
from tests.fixtures.objects import BpfObjects, CompileBpf

pytestmark = pytest.mark.kernel

PACKET = bytes(64)  # BPF_PROG_TEST_RUN wants at least an Ethernet header


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def test_the_loadable_program_of_a_mixed_object_loads(bpf_objects: BpfObjects, bpffs: Path) -> None:
    collection = read_collection(bpf_objects["mixed_object"])
    loaded = load_program(collection, "count_packets", pin_root=bpffs)
    try:
        assert loaded.program.test_run(PACKET) == 0  # TC_ACT_OK
        assert struct.unpack("<Q", loaded.maps["packets"].map.lookup(u32(0)) or b"")[0] == 1
    finally:
        loaded.close()
    for name, reason in (("cc_init", "struct_ops"), ("odd_one", "names no program type")):
        with pytest.raises(UnsupportedError, match=rf"^program '{name}' cannot be loaded: .*{reason}"):
            load_program(collection, name, pin_root=bpffs)
    assert not (bpffs / "loads" / "cc_init").exists()


def test_cli_load_of_a_refused_program_names_the_reason(bpf_objects: BpfObjects, bpffs: Path) -> None:
    obj = str(bpf_objects["mixed_object"])

    def load(program: str, obj: str = obj) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "bpfshare", "--pin-root", str(bpffs), "load", obj, "--program", program, "--json"]
        return subprocess.run(args, capture_output=True, text=True)

    ok = load("count_packets")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["program"] == "count_packets"
    pipeline = load("entry", str(bpf_objects["tail_calls"]))
    assert pipeline.returncode == 0, pipeline.stderr
    out = json.loads(pipeline.stdout)
    assert set(out["tailCallPrograms"]) == {"stage_one", "stage_two"}
    assert set(out["maps"]) == {"trail", "jumps"}
    refused = load("cc_init")
    assert refused.returncode != 0
    assert "program 'cc_init' cannot be loaded: unsupported: program 'cc_init' (section struct_ops/cc_init)" in (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr


def test_tail_calls_through_initial_slots(bpf_objects: BpfObjects, bpffs: Path) -> None:
    """Loading ``entry`` alone loads stage_one and stage_two into jumps[0] and jumps[1]."""
    collection = read_collection(bpf_objects["tail_calls"])
    loaded = load_program(collection, "entry", pin_root=bpffs)
    try:
        assert set(loaded.slot_programs) == {"stage_one", "stage_two"}
        assert loaded.program.test_run(PACKET) == 42  # entry -> stage_one -> stage_two
        trail = loaded.maps["trail"].map
        assert struct.unpack("<Q", trail.lookup(u32(0)) or b"")[0] == 1 | 2 | 4
        jumps_pin = loaded.maps["jumps"].pin_path
        assert jumps_pin is not None
    finally:
        loaded.close()
    # The pinned prog array keeps the tail-call programs alive after every fd is closed.
    with Map.from_pin(jumps_pin) as jumps:
        ids = [struct.unpack("<I", jumps.lookup(u32(i)) or b"\0\0\0\0")[0] for i in (0, 1)]
    names = []
    for prog_id in ids:
        with Program.from_id(prog_id) as prog:
            names.append(prog.info().name)
    assert names == ["stage_one", "stage_two"]
    # A reload (an upgrade) reuses the prog array and puts its own stages in, as libbpf does.
    again = load_program(collection, "entry", pin_root=bpffs)
    try:
        assert again.maps["jumps"].reused
        assert again.program.test_run(PACKET) == 42
        with Map.from_pin(jumps_pin) as jumps:
            new_ids = [struct.unpack("<I", jumps.lookup(u32(i)) or b"\0\0\0\0")[0] for i in (0, 1)]
        assert new_ids == [again.slot_programs["stage_one"].info().id, again.slot_programs["stage_two"].info().id]
        assert set(new_ids).isdisjoint(ids)
    finally:
        again.close()


def test_inner_maps_in_initial_slots(bpf_objects: BpfObjects, bpffs: Path) -> None:
    collection = read_collection(bpf_objects["map_in_map"])
    loaded = load_program(collection, "read_inner", pin_root=bpffs)
    try:
        inner_a, inner_b, outer = (loaded.maps[n].map for n in ("inner_a", "inner_b", "outer"))
        slot = {i: outer.lookup(u32(i)) for i in range(4)}
        assert slot[0] == u32(inner_a.info().id) and slot[2] == u32(inner_b.info().id)
        assert slot[1] is None and slot[3] is None
        inner_a.update(u32(0), u32(7))
        assert loaded.program.test_run(PACKET) == 7  # the program reaches inner_a through outer[0]
    finally:
        loaded.close()


def test_custom_pinning_from_a_bpf_pinning_file(
    bpf_objects: BpfObjects, bpffs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = read_collection(bpf_objects["custom_pinning"])
    pinning = tmp_path / "bpf_pinning"
    monkeypatch.setenv(ENV_VAR, str(pinning))
    pinning.write_text("# value subdir\n7 elsewhere\n")
    with pytest.raises(BpfshareError, match=rf"^map 'custom_counts': pinning 42 is not in {pinning}$"):
        load_program(collection, "count_custom", pin_root=bpffs)
    assert not (bpffs / "loads" / "count_custom" / "program").exists()
    pinning.write_text("42\tdatapath/shared  # custom\n")
    loaded = load_program(collection, "count_custom", pin_root=bpffs)
    try:
        assert loaded.maps["custom_counts"].pin_path == bpffs / "datapath" / "shared" / "custom_counts"
        assert not loaded.maps["custom_counts"].reused
        map_id = loaded.maps["custom_counts"].map.info().id
    finally:
        loaded.close()
    again = load_program(collection, "count_custom", pin_root=bpffs)
    try:  # a second load (or another object with the same value) shares the pinned map
        assert again.maps["custom_counts"].reused
        assert again.maps["custom_counts"].map.info().id == map_id
    finally:
        again.close()


def _slot_names(
    pin: Path, open_id: Callable[[int], Program] | Callable[[int], Map] = Program.from_id
) -> dict[int, str]:
    """The name of the program (or, with ``open_id=Map.from_id``, the map) in each slot of a pinned array."""
    with Map.from_pin(pin) as array:
        ids = {i: array.lookup(u32(i)) for i in range(4)}
    names = {}
    for index, raw in ids.items():
        if raw is not None:
            with open_id(struct.unpack("<I", raw)[0]) as held:
                names[index] = held.info().name
    return names


def test_tail_calls_match_libbpf(bpf_objects: BpfObjects, bpffs: Path) -> None:
    """The same object through ``bpftool prog loadall`` (libbpf): the same instructions for each
    program and the same programs in the prog array's slots."""
    obj = bpf_objects["tail_calls"]
    libbpf_loadall(obj, bpffs / "libbpf", bpffs / "libbpf_maps")
    loaded = load_program(read_collection(obj), "entry", pin_root=bpffs)
    try:
        ours = {"entry": loaded.program, **loaded.slot_programs}
        for name, prog in ours.items():
            mine = xlated("id", str(prog.info().id))
            assert len(mine.splitlines()) > 10
            assert mine == xlated("pinned", str(bpffs / "libbpf" / name)), name
        jumps_pin = loaded.maps["jumps"].pin_path
        assert jumps_pin is not None
        assert (
            _slot_names(jumps_pin)
            == _slot_names(bpffs / "libbpf_maps" / "jumps")
            == {
                0: "stage_one",
                1: "stage_two",
            }
        )
    finally:
        loaded.close()


def test_inner_maps_match_libbpf(bpf_objects: BpfObjects, bpffs: Path) -> None:
    obj = bpf_objects["map_in_map"]
    libbpf_loadall(obj, bpffs / "libbpf", bpffs / "libbpf_maps")
    loaded = load_program(read_collection(obj), "read_inner", pin_root=bpffs)
    try:
        mine = xlated("id", str(loaded.program.info().id))
        assert len(mine.splitlines()) > 10 and mine == xlated("pinned", str(bpffs / "libbpf" / "read_inner"))
        outer_pin = loaded.maps["outer"].pin_path
        assert outer_pin is not None
        expected = {0: "inner_a", 2: "inner_b"}
        assert (
            _slot_names(outer_pin, Map.from_id) == _slot_names(bpffs / "libbpf_maps" / "outer", Map.from_id) == expected
        )
    finally:
        loaded.close()


IPROUTE2_MAP_IN_MAP = """
#include "legacy_maps.h"
struct bpf_elf_map SEC("maps") inner_tpl = {
    .type = BPF_MAP_TYPE_ARRAY, .size_key = 4, .size_value = 4, .max_elem = 1, .id = 7, .inner_idx = 1,
};
struct bpf_elf_map SEC("maps") outer = {
    .type = BPF_MAP_TYPE_ARRAY_OF_MAPS, .size_key = 4, .size_value = 4, .max_elem = 2, .inner_id = 7,
};
SEC("classifier") int via_outer(struct __sk_buff *skb) {
    __u32 key = 1, zero = 0;
    void *inner = bpf_map_lookup_elem(&outer, &key);
    __u32 *value = inner ? bpf_map_lookup_elem(inner, &zero) : 0;
    return value ? *value : 255;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_iproute2_inner_idx_fills_the_outer_map(compile_bpf: CompileBpf, bpffs: Path) -> None:
    """iproute2's bpf_maps_attach_all: the map whose id an outer map's inner_id names goes in at its inner_idx."""
    collection = read_collection(compile_bpf(IPROUTE2_MAP_IN_MAP))
    loaded = load_program(collection, "via_outer", pin_root=bpffs)
    try:
        outer, inner = loaded.maps["outer"].map, loaded.maps["inner_tpl"].map
        assert outer.lookup(u32(1)) == u32(inner.info().id) and outer.lookup(u32(0)) is None
        inner.update(u32(0), u32(9))
        assert loaded.program.test_run(PACKET) == 9
    finally:
        loaded.close()


BAD_STAGE = """
SEC("tc") int bad_stage(struct __sk_buff *skb) {
    return *(__u8 *)(long)skb->data;  /* no bounds check: the verifier refuses it */
}
struct { __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(max_entries, 1); __uint(key_size, sizeof(__u32));
         __array(values, int (struct __sk_buff *)); } jumps SEC(".maps") = { .values = { [0] = (void *)&bad_stage } };
SEC("tc") int first(struct __sk_buff *skb) { bpf_tail_call(skb, &jumps, 0); return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_a_tail_call_program_the_verifier_refuses_is_named(compile_bpf: CompileBpf, bpffs: Path) -> None:
    collection = read_collection(compile_bpf(BAD_STAGE))
    with pytest.raises(
        VerifierError,
        match=r"(?s)^tail-call program 'bad_stage' \(an initial prog array slot\): .*invalid access to packet",
    ):
        load_program(collection, "first", pin_root=bpffs)
    assert not (bpffs / "loads" / "first" / "program").exists()
