"""Maps created with BTF on the real kernel: a bpf_timer whose callback runs, a bpf_spin_lock, the
fallback without BTF (libbpf's "Retrying without BTF") and its refusal for values that need it, a
pinned map made without BTF still reused, and bpftool (libbpf) loading the same objects to the same
instructions with BTF maps too."""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpfshare.errors import KernelError, VerifierError
from bpfshare.kernel.btf import load_btf
from bpfshare.kernel.maps import Map
from bpfshare.load.loader import PRIVATE_MAPS_DIR, LoadedProgram, default_pin_dir, load_program
from bpfshare.object.btf import Btf
from bpfshare.object.reader import read_collection
from bpfshare.spec import CollectionSpec
from tests.fixtures.bpftool import bpftool_json, libbpf_load
from tests.fixtures.netenv import wait_for
from tests.fixtures.objects import BpfObjects, CompileBpf
from tests.kernel.test_externs import same_xlated

pytestmark = pytest.mark.kernel

PACKET = bytes(64)
ZERO = struct.pack("<I", 0)


@pytest.fixture
def load(bpffs: Path) -> Iterator[object]:
    loaded: list[LoadedProgram] = []

    def load_(source: Path | CollectionSpec, program: str) -> LoadedProgram:
        spec = source if isinstance(source, CollectionSpec) else read_collection(source)
        lp = load_program(spec, program, pin_root=bpffs)
        loaded.append(lp)
        return lp

    yield load_
    for lp in loaded:
        lp.close()


def u64(live: Map, key: bytes = ZERO) -> int:
    value = live.lookup(key)
    assert value is not None
    return int(struct.unpack_from("<Q", value)[0])


def test_timer_callback_runs(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    lp = load(bpf_objects["callback_timer"], "arm_timer")
    timers, fired = lp.maps["timers"].map, lp.maps["fired"].map
    assert timers.info().btf_id != 0  # created with the object's BTF, which the timer needs
    # One BTF object for the load, the program's (func_info) and the maps', as libbpf does.
    assert lp.program.info().btf_id == timers.info().btf_id == fired.info().btf_id
    for run in (1, 2):
        assert lp.program.test_run(PACKET) == 0
        assert u64(timers) == run  # armed
        assert wait_for(lambda run=run: u64(fired) >= run, timeout=5.0), f"the callback did not run ({run})"


def test_timer_map_without_btf_is_refused_by_the_verifier(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    """Why the map needs BTF: the same object with its map's BTF dropped fails in the verifier."""
    spec = read_collection(bpf_objects["callback_timer"])
    bare = dataclasses.replace(spec.maps["timers"], btf=None)
    spec = dataclasses.replace(spec, maps={**spec.maps, "timers": bare})
    with pytest.raises(VerifierError, match=r"map 'timers' has to have BTF in order to use bpf_timer"):
        load(spec, "arm_timer")


def test_spin_lock(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    lp = load(bpf_objects["map_spin_lock"], "count_locked")
    assert lp.maps["locked"].map.info().btf_id != 0
    assert lp.program.info().btf_id == 0  # no callback: the program itself is loaded without BTF
    assert [lp.program.test_run(PACKET) for _ in range(3)] == [1, 2, 3]


def test_pinned_map_without_btf_is_reused(bpf_objects: BpfObjects, bpffs: Path, load) -> None:  # type: ignore[no-untyped-def]
    """A map pinned by an earlier loader without BTF matches the same definition with BTF."""
    spec = read_collection(bpf_objects["flow_counter"])
    shared = spec.maps["shared_counts"]
    assert shared.btf is not None
    with Map.create(shared) as old:  # no btf_fd: as bpfshare created maps before
        old.pin(bpffs / "shared_counts")
        old_id = old.info().id
        assert old.info().btf_id == 0
    lp = load(spec, "count_ingress")
    assert lp.maps["shared_counts"].reused and lp.maps["shared_counts"].map.info().id == old_id


def test_refused_btf_retried_without_unless_the_value_needs_it(
    bpf_objects: BpfObjects, caplog: pytest.LogCaptureFixture
) -> None:
    """libbpf's bpf_object__create_map: when the kernel refuses the map with its BTF, it is
    created without (a warning), unless its value holds fields only BTF describes."""
    maps = read_collection(bpf_objects["callback_timer"]).maps
    fired, timers = maps["fired"], maps["timers"]
    assert fired.btf is not None
    wrong = dataclasses.replace(fired, btf_value_type_id=fired.btf_key_type_id)  # a u32 for a u64 value
    with load_btf(fired.btf, "test") as btf, caplog.at_level(logging.WARNING):
        with Map.create(wrong, btf_fd=int(btf)) as live:
            assert live.info().btf_id == 0
        assert "the kernel refused its BTF" in caplog.text and "'fired'" in caplog.text
        with Map.create(fired, btf_fd=int(btf)) as live:
            assert live.info().btf_id != 0
        wrong_timer = dataclasses.replace(timers, btf_value_type_id=timers.btf_key_type_id)
        with pytest.raises(KernelError, match=r"creating map 'timers' .*which its value needs \(struct bpf_timer at"):
            Map.create(wrong_timer, btf_fd=int(btf))


def test_local_storage_map_from_an_object(compile_bpf: CompileBpf) -> None:
    """A task storage map needs its key and value types (bpf_local_storage_map_check_btf)."""
    src = """
    struct { __uint(type, BPF_MAP_TYPE_TASK_STORAGE); __uint(map_flags, BPF_F_NO_PREALLOC);
             __type(key, int); __type(value, __u64); } store SEC(".maps");
    SEC("tc") int use(struct __sk_buff *skb) { return 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    spec = read_collection(compile_bpf(src)).maps["store"]
    assert spec.btf is not None
    with load_btf(spec.btf, "test") as btf, Map.create(spec, btf_fd=int(btf)) as live:
        assert live.info().btf_id != 0


# -- the same as libbpf ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("example", "program", "maps"),
    [("callback_timer", "arm_timer", ("timers", "fired")), ("map_spin_lock", "count_locked", ("locked",))],
)
def test_same_xlated_and_map_btf_as_bpftool(  # type: ignore[no-untyped-def]
    bpf_objects: BpfObjects, bpffs: Path, load, example: str, program: str, maps: tuple[str, ...]
) -> None:
    pin = bpffs / f"bpftool_{example}"
    libbpf_load(bpf_objects[example], pin)
    lp = load(bpf_objects[example], program)
    same_xlated(lp, pin)
    # libbpf's maps have BTF, with the same value type as ours.
    info = bpftool_json("prog", "show", "pinned", str(pin))
    assert isinstance(info, dict)
    theirs_btf: dict[str, int] = {}
    for map_id in info["map_ids"]:
        shown = bpftool_json("map", "show", "id", str(map_id))
        assert isinstance(shown, dict)
        theirs_btf[shown["name"]] = shown.get("btf_id", 0)
    for name in maps:
        assert theirs_btf[name] != 0, name
        assert lp.maps[name].map.info().btf_id != 0, name
    ours_value = Btf(lp.maps[maps[0]].spec.btf or b"").type(lp.maps[maps[0]].spec.btf_value_type_id)
    dumped = bpftool_json("btf", "dump", "id", str(theirs_btf[maps[0]]))
    assert isinstance(dumped, dict)
    names = {t.get("name") for t in dumped["types"] if t.get("kind") == "STRUCT"}
    assert Btf(lp.maps[maps[0]].spec.btf or b"").name(ours_value) in names


def with_map_btf(spec: CollectionSpec, data: bytes) -> CollectionSpec:
    maps = {name: dataclasses.replace(m, btf=data) if m.btf is not None else m for name, m in spec.maps.items()}
    return dataclasses.replace(spec, maps=maps)


def test_object_btf_the_kernel_refuses(  # type: ignore[no-untyped-def]
    bpf_objects: BpfObjects, load, caplog: pytest.LogCaptureFixture
) -> None:
    """libbpf: "Error loading .BTF into kernel ... BTF is optional, ignoring": the maps are created
    without it, with one warning; a map whose value needs it fails, naming the field."""
    garbage = b"\x9f\xeb\x01\x00not BTF"
    with caplog.at_level(logging.WARNING):
        lp = load(with_map_btf(read_collection(bpf_objects["flow_counter"]), garbage), "count_ingress")
    assert lp.maps["shared_counts"].map.info().btf_id == 0
    assert caplog.text.count("creating the maps without BTF") == 1
    timer = with_map_btf(read_collection(bpf_objects["callback_timer"]), garbage)
    with pytest.raises(
        KernelError,
        match=r"^creating map 'timers': its value holds struct bpf_timer at offset 8, which needs BTF: loading the "
        r"object's BTF: ",
    ):
        load(timer, "arm_timer")


def test_reused_map_without_btf_is_explained(bpf_objects: BpfObjects, bpffs: Path, load) -> None:  # type: ignore[no-untyped-def]
    """A spin lock's map pinned without BTF passes the compatibility check (BTF is not compared),
    but the verifier refuses the lock: the error says the map was reused and why it cannot work."""
    spec = read_collection(bpf_objects["map_spin_lock"])
    pin = default_pin_dir(bpffs, "count_locked") / PRIVATE_MAPS_DIR / "locked"
    pin.parent.mkdir(parents=True)
    with Map.create(spec.maps["locked"]) as old:  # no btf_fd
        old.pin(pin)
    with pytest.raises(VerifierError) as caught:
        load(spec, "count_locked")
    message = str(caught.value)
    assert "map 'locked' has to have BTF in order to use bpf_spin_lock" in message
    assert message.endswith(
        f"map 'locked' was reused from {pin}, which was created without BTF: its value's struct bpf_spin_lock "
        "at offset 8 needs it (remove the pin so that the load creates the map with BTF)"
    )
    pin.unlink()
    assert load(spec, "count_locked").program.test_run(PACKET) == 1
