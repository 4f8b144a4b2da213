"""What every handle shares (``KernelObject``): opening by pin or ID, kind checks, repr, closing."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from bpfshare.errors import KernelError
from bpfshare.kernel.links import Link
from bpfshare.kernel.maps import Map
from bpfshare.kernel.objects import ObjectKind
from bpfshare.kernel.programs import Program
from bpfshare.spec import MapSpec
from bpfshare.types import MapType, ProgType
from tests.kernel.asm import returns, simple_spec, u32, u64

pytestmark = pytest.mark.kernel

ARRAY = MapSpec(name="counts", type=MapType.Array, key_size=4, value_size=8, max_entries=1)


def test_each_handle_has_its_kind() -> None:
    assert (Map.kind, Program.kind, Link.kind) == (ObjectKind.MAP, ObjectKind.PROG, ObjectKind.LINK)


def test_repr_open_and_closed() -> None:
    m = Map.create(ARRAY)
    assert re.fullmatch(r"Map\(id=\d+, name='counts', type=Array\)", repr(m))
    m.close()
    assert repr(m) == "Map(closed)"
    code = returns(0)
    with Program.load(simple_spec(ProgType.SchedCls, code, name="ret0"), code) as prog:
        assert re.fullmatch(r"Program\(id=\d+, name='ret0', tag=[0-9a-f]{16}\)", repr(prog))
    assert repr(prog) == "Program(closed)"
    with pytest.raises(ValueError, match="closed"):
        prog.info()


def test_from_pin_and_from_id_return_the_subclass(bpffs: Path) -> None:
    with Map.create(ARRAY) as m:
        m.pin(bpffs / "counts")
        map_id = m.info().id
    with Map.from_pin(bpffs / "counts") as by_pin, Map.from_id(map_id) as by_id:
        assert type(by_pin) is Map and type(by_id) is Map
        assert by_pin.info().id == by_id.info().id == map_id


def test_readonly_pin(bpffs: Path) -> None:
    with Map.create(ARRAY) as m:
        m.pin(bpffs / "counts")
    with Map.from_pin(bpffs / "counts", readonly=True) as ro:
        assert ro.lookup(u32(0)) == u64(0)
        with pytest.raises(KernelError) as exc:
            ro.update(u32(0), u64(1))
        assert exc.value.errno == errno.EPERM


def test_kind_mismatch_and_missing_ids_are_named(bpffs: Path) -> None:
    with Map.create(ARRAY) as m:
        m.pin(bpffs / "counts")
    with pytest.raises(KernelError, match="holds a bpf-map, not a bpf-link"):
        Link.from_pin(bpffs / "counts")
    with pytest.raises(KernelError, match="holds a bpf-map, not a bpf-prog"):
        Program.from_pin(bpffs / "counts")
    with pytest.raises(KernelError, match=r"opening link id 4294967295: .*ENOENT") as exc:
        Link.from_id(0xFFFFFFFF)
    assert exc.value.errno == errno.ENOENT


def test_eacces_and_eperm_opening_a_pin_are_explained(bpffs: Path, tmp_path: Path) -> None:
    """BPF_OBJ_GET answers EACCES for anything that is not a pinned object and EPERM for a '.'
    anywhere in a name inside bpffs: each comes with its cause, never bare."""
    (bpffs / "tc" / "globals").mkdir(parents=True)
    with Map.create(ARRAY) as m:
        m.pin(bpffs / "tc" / "globals" / "counts")
    regular = tmp_path / "counts"
    regular.write_text("not a pin")
    cases = [
        (bpffs / "tc" / "globals", errno.EACCES, f"{bpffs}/tc/globals is a directory, not a pinned map"),
        (bpffs, errno.EACCES, f"{bpffs} is a directory, not a pinned map (name the pin inside it)"),
        (regular, errno.EACCES, f"{regular} is not on a bpffs mount, so it is not a pinned map"),
        (bpffs / "tc.v2" / "counts", errno.EPERM, f"bpffs refuses names containing '.': 'tc.v2' in {bpffs}"),
        (bpffs / "tc" / "globals" / "flow.counts", errno.EPERM, "bpffs refuses names containing '.' ('flow.counts')"),
    ]
    for path, code, cause in cases:
        with pytest.raises(KernelError) as exc:
            Map.from_pin(path)
        assert exc.value.errno == code
        assert str(exc.value).startswith(f"opening pin {path}: BPF_OBJ_GET: ")
        assert cause in str(exc.value), str(exc.value)
    with pytest.raises(KernelError, match=r"not a pinned prog \(name the pin inside it\)"):
        Program.from_pin(bpffs / "tc")
