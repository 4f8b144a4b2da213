"""Live maps on the real kernel: create, pin, reopen, elements, per-CPU layout, global data."""

from __future__ import annotations

import errno
import fcntl
from pathlib import Path

import pytest

from bpfshare.errors import KernelError
from bpfshare.kernel.cpus import parse_cpu_list, possible_cpus
from bpfshare.kernel.maps import Map
from bpfshare.kernel.objects import map_ids
from bpfshare.kernel.syscall import FD
from bpfshare.spec import DefinitionStyle, MapSpec
from bpfshare.types import MapFlag, MapType
from tests.kernel.asm import read_u64, u32, u64

pytestmark = pytest.mark.kernel

HASH = MapSpec(name="flow_counts", type=MapType.Hash, key_size=4, value_size=8, max_entries=64)


def test_create_info_and_elements() -> None:
    with Map.create(HASH) as m:
        info = m.info()
        assert info.type is MapType.Hash
        assert (info.key_size, info.value_size, info.max_entries) == (4, 8, 64)
        assert info.name == "flow_counts"
        assert info.flags == MapFlag(0)
        assert info.id > 0

        assert m.lookup(u32(1)) is None
        m.update(u32(1), u64(10))
        m.update(u32(2), u64(20))
        assert read_u64(m.lookup(u32(1))) == 10
        assert sorted(m.keys()) == [u32(1), u32(2)]
        assert dict(m.items()) == {u32(1): u64(10), u32(2): u64(20)}
        assert m.delete(u32(1)) is True
        assert m.delete(u32(1)) is False
        assert list(m.keys()) == [u32(2)]


def test_update_flags_and_sizes() -> None:
    from bpfshare.kernel.abi import BPF_EXIST, BPF_NOEXIST

    with Map.create(HASH) as m:
        with pytest.raises(KernelError) as exc:
            m.update(u32(5), u64(1), BPF_EXIST)
        assert "ENOENT" in str(exc.value) and "flow_counts" in str(exc.value)
        m.update(u32(5), u64(1), BPF_NOEXIST)
        with pytest.raises(KernelError, match="EEXIST"):
            m.update(u32(5), u64(2), BPF_NOEXIST)
        with pytest.raises(ValueError, match="key must be 4 bytes"):
            m.lookup(b"\0" * 8)
        with pytest.raises(ValueError, match="value must be 8 bytes"):
            m.update(u32(1), b"\0")


def test_pin_from_pin_from_id(bpffs: Path) -> None:
    path = bpffs / "shared"
    with Map.create(HASH) as m:
        m.pin(path)
        m.update(u32(7), u64(70))
        map_id = m.info().id
    # The pin keeps the map alive after our fd is gone.
    with Map.from_pin(path) as again:
        assert again.info().id == map_id
        assert read_u64(again.lookup(u32(7))) == 70
        assert map_id in set(map_ids())
    with Map.from_id(map_id) as by_id:
        assert read_u64(by_id.lookup(u32(7))) == 70


def test_from_pin_errors(bpffs: Path) -> None:
    with pytest.raises(KernelError) as exc:
        Map.from_pin(bpffs / "missing")
    assert exc.value.errno == 2 and "missing" in str(exc.value)

    from bpfshare.kernel.programs import Program
    from bpfshare.types import ProgType
    from tests.kernel.asm import returns, simple_spec

    with Program.load(simple_spec(ProgType.SchedCls, returns(0)), returns(0)) as prog:
        prog.pin(bpffs / "prog")
    with pytest.raises(KernelError, match="holds a bpf-prog, not a bpf-map"):
        Map.from_pin(bpffs / "prog")


def test_percpu_sizing() -> None:
    ncpu = possible_cpus()
    spec = MapSpec(name="pcpu", type=MapType.PercpuArray, key_size=4, value_size=4, max_entries=2)
    with Map.create(spec) as m:
        assert m.value_buffer_size == 8 * ncpu  # 4 rounded up to 8, per possible CPU
        raw = m.lookup(u32(0))
        assert raw == b"\0" * (8 * ncpu)
        m.update(u32(1), [u32(100 + cpu) for cpu in range(ncpu)])
        assert m.lookup_percpu(u32(1)) == [u32(100 + cpu) for cpu in range(ncpu)]
        with pytest.raises(ValueError, match="one value per possible CPU"):
            m.update(u32(1), [u32(1)] * (ncpu + 1))


def test_possible_cpu_parsing() -> None:
    assert parse_cpu_list("0-3,5,7-8\n") == [0, 1, 2, 3, 5, 7, 8]
    assert parse_cpu_list("0") == [0]


def test_object_name_sanitized_and_truncated() -> None:
    """The kernel keeps what spec.kernel_object_name predicts (the rule itself: tests/unit/test_spec.py)."""
    spec = MapSpec(name="a-very-long-map-name", type=MapType.Array, key_size=4, value_size=4, max_entries=1)
    with Map.create(spec) as m:
        assert m.info().name == "a_very_long_map"


def test_global_data_contents_and_rodata_frozen() -> None:
    data = MapSpec(
        name=".data",
        type=MapType.Array,
        key_size=4,
        value_size=16,
        max_entries=1,
        style=DefinitionStyle.GLOBAL_DATA,
        section=".data",
        contents=b"hello",
    )
    with Map.create(data) as m:
        assert m.lookup(u32(0)) == b"hello".ljust(16, b"\0")
        m.update(u32(0), b"x" * 16)  # .data stays writable

    rodata = MapSpec(
        name=".rodata",
        type=MapType.Array,
        key_size=4,
        value_size=8,
        max_entries=1,
        flags=MapFlag.RdonlyProg,
        style=DefinitionStyle.GLOBAL_DATA,
        section=".rodata",
        contents=b"\x2a",
    )
    with Map.create(rodata) as m:
        assert m.lookup(u32(0)) == b"\x2a".ljust(8, b"\0")
        with pytest.raises(KernelError) as exc:
            m.update(u32(0), b"\0" * 8)
        assert exc.value.errno == 1  # EPERM: frozen


def test_map_of_maps_uses_inner_spec() -> None:
    inner = MapSpec(name="inner", type=MapType.Array, key_size=4, value_size=4, max_entries=1)
    outer = MapSpec(name="outer", type=MapType.ArrayOfMaps, key_size=4, value_size=0, max_entries=2, inner=inner)
    with Map.create(outer) as m, Map.create(inner) as child:
        assert m.info().value_size == 4  # value size 0 means "a map": 4
        m.update(u32(0), u32(child.fd))
        assert m.lookup(u32(0)) == u32(child.info().id)  # user space reads back the ID


def test_create_error_names_the_map() -> None:
    bad = MapSpec(name="broken", type=MapType.Hash, key_size=0, value_size=8, max_entries=1)
    with pytest.raises(KernelError) as exc:  # a MapRuleError: found before the kernel is asked
        Map.create(bad)
    assert str(exc.value) == (
        "creating map 'broken' (Hash, key 0, value 8, max entries 1): Hash needs keySize at least 1, not 0"
    )
    assert exc.value.errno == errno.EINVAL


def test_fds_are_close_on_exec_and_owned() -> None:
    m = Map.create(HASH)
    assert fcntl.fcntl(m.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    with Map.from_id(m.info().id) as again:
        assert fcntl.fcntl(again.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    m.close()
    m.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        _ = m.fd
    dup = FD(fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 0))
    dup.close()
    dup.close()  # idempotent: the number (which the process may reuse) is never closed twice
    assert dup.closed and repr(dup) == "FD(closed)"


def test_syscall_error_names_the_command() -> None:
    from bpfshare.kernel.abi import Cmd
    from bpfshare.kernel.syscall import bpf, new_attr

    attr = new_attr()
    attr.map_elem.map_fd = 2**31 - 1  # not an open fd
    with pytest.raises(KernelError) as exc:
        bpf(Cmd.MAP_LOOKUP_ELEM, attr)
    assert str(exc.value) == "BPF_MAP_LOOKUP_ELEM: Bad file descriptor (EBADF)"
    assert exc.value.errno == 9
