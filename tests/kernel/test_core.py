"""CO-RE objects (bpf/core_*.c, built against vmlinux.h) loaded on the running kernel: values
checked with BPF_PROG_TEST_RUN, a poisoned field named in the error, and a differential test
against bpftool (libbpf): the same translated instructions."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest

from bpfshare.errors import BpfshareError, VerifierError
from bpfshare.load.loader import load_program
from bpfshare.object import read_collection
from tests.fixtures.bpftool import libbpf_loadall, xlated
from tests.fixtures.objects import BpfObjects

pytestmark = pytest.mark.kernel


def _packet(tcp_flags: int, doff: int = 5) -> bytes:
    """Ethernet + IPv4 + TCP header (with doff and flags) + padding."""
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 60, 0, 0, 64, 6, 0, b"\x0a\0\0\1", b"\x0a\0\0\2")
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 0, 0, doff << 4, tcp_flags, 0, 0, 0)
    return eth + ip + tcp + b"\0" * 26


def _run(obj: Path, program: str, bpffs: Path, data: bytes) -> int:
    loaded = load_program(read_collection(obj), program, pin_root=bpffs, pin_program=False)
    try:
        return loaded.program.test_run(data)
    finally:
        loaded.close()


def test_field_offset_reads_the_context(bpf_objects: BpfObjects, bpffs: Path) -> None:
    data = _packet(0x02)
    assert _run(bpf_objects["core_skb"], "core_len", bpffs, data) == len(data)


def test_exists_size_enum_and_type_checks(bpf_objects: BpfObjects, bpffs: Path) -> None:
    assert _run(bpf_objects["core_skb"], "core_checks", bpffs, _packet(0)) == 0x1FF


def test_a_guarded_missing_field_loads(bpf_objects: BpfObjects, bpffs: Path) -> None:
    assert _run(bpf_objects["core_skb"], "core_guarded", bpffs, _packet(0)) == 7


def test_bitfields(bpf_objects: BpfObjects, bpffs: Path) -> None:
    obj = bpf_objects["core_skb"]
    assert _run(obj, "core_bitfields", bpffs, _packet(0x02, doff=5)) == 510  # SYN
    assert _run(obj, "core_bitfields", bpffs, _packet(0x10, doff=8)) == 801  # ACK


def test_an_unguarded_missing_field_is_named(bpf_objects: BpfObjects, bpffs: Path) -> None:
    collection = read_collection(bpf_objects["core_missing"])
    with pytest.raises(
        VerifierError, match=r"struct __sk_buff___bad: no field no_such_field in the kernel's BTF"
    ) as err:
        load_program(collection, "core_missing", pin_root=bpffs, pin_program=False)
    assert "call unknown#195896080" in err.value.log  # poisoned as libbpf poisons


def test_same_xlated_as_bpftool(bpf_objects: BpfObjects, bpffs: Path) -> None:
    """libbpf (bpftool prog loadall) and bpfshare relocate every program of the object the same way."""
    obj = bpf_objects["core_skb"]
    pins = bpffs / "bpftool"
    libbpf_loadall(obj, pins)
    try:
        collection = read_collection(obj)
        for name in collection.programs:
            loaded = load_program(collection, name, pin_root=bpffs, pin_program=False)
            try:
                ours = xlated("id", str(loaded.program.info().id))
                assert ours and ours == xlated("pinned", str(pins / name)), name
            finally:
                loaded.close()
    finally:
        shutil.rmtree(pins, ignore_errors=True)


def test_btf_file_instead_of_sys_kernel_btf(bpf_objects: BpfObjects, bpffs: Path, tmp_path: Path) -> None:
    """``--btf FILE`` (load_program's btf=): the kernel's types read from a file."""
    from bpfshare.object import kernel_btf

    copy = tmp_path / "vmlinux.btf"
    copy.write_bytes(Path("/sys/kernel/btf/vmlinux").read_bytes())
    collection = read_collection(bpf_objects["core_skb"])
    loaded = load_program(collection, "core_checks", pin_root=bpffs, pin_program=False, btf=copy)
    try:
        assert loaded.program.test_run(_packet(0)) == 0x1FF
        assert kernel_btf.kernel_btf(copy) is not kernel_btf.kernel_btf()
    finally:
        loaded.close()
        kernel_btf.clear_cache()
    # The file is what is read: one that holds no BTF is refused, naming it.
    bogus = tmp_path / "not.btf"
    bogus.write_bytes(b"\0" * 64)
    with pytest.raises(BpfshareError, match=re.escape(str(bogus))):
        load_program(collection, "core_checks", pin_root=bpffs, pin_program=False, btf=bogus)
    kernel_btf.clear_cache()
