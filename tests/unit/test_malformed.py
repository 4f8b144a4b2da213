"""Malformed objects: always an ObjectError that says what is wrong, never another exception."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object import read_collection
from bpfshare.object.elf import ElfObject
from tests.fixtures.objects import BpfObjects, CompileBpf


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


@pytest.fixture
def flow_counter(bpf_objects: BpfObjects) -> bytes:
    return bpf_objects["flow_counter"].read_bytes()


def test_not_elf(tmp_path: Path) -> None:
    with pytest.raises(ObjectError, match="not an ELF object"):
        read_collection(b"")
    with pytest.raises(ObjectError, match="not an ELF object"):
        read_collection(b"hello world" * 10)
    with pytest.raises(ObjectError, match="cannot read"):
        read_collection(tmp_path / "missing.o")
    with pytest.raises(ObjectError, match="cannot read"):
        read_collection(tmp_path)


def test_header_checks(flow_counter: bytes) -> None:
    with pytest.raises(ObjectError, match="not a 64-bit ELF"):
        read_collection(patched(flow_counter, 4, "B", 1))
    with pytest.raises(UnsupportedError, match="big-endian"):
        read_collection(patched(flow_counter, 5, "B", 2))
    with pytest.raises(ObjectError, match="not an eBPF object: e_machine is EM_X86_64"):
        read_collection(patched(flow_counter, 18, "<H", 62))
    with pytest.raises(ObjectError, match="not a relocatable object"):
        read_collection(patched(flow_counter, 16, "<H", 2))
    with pytest.raises(ObjectError, match=r"section header table .* extends beyond the end"):
        read_collection(patched(flow_counter, 0x28, "<Q", len(flow_counter)))
    with pytest.raises(ObjectError, match="bad section name string table index"):
        read_collection(patched(flow_counter, 0x3E, "<H", 999))


def test_section_and_symbol_checks(flow_counter: bytes) -> None:
    elf = ElfObject(flow_counter)
    shoff = struct.unpack_from("<Q", flow_counter, 0x28)[0]
    tc = elf.by_name["tc"]
    # a section name outside the string table
    with pytest.raises(ObjectError, match=r"section #\d+ name: string offset"):
        read_collection(patched(flow_counter, shoff + tc.index * 64, "<I", 0xFFFFFF))
    # program section data beyond the end of the file
    with pytest.raises(ObjectError, match=r"section tc .* extends beyond the end of the file"):
        read_collection(patched(flow_counter, shoff + tc.index * 64 + 0x18, "<Q", len(flow_counter)))
    # a relocation naming a symbol that does not exist
    rel = next(s for s in elf.sections if s.name == ".reltc")
    with pytest.raises(ObjectError, match="names symbol #65535"):
        read_collection(patched(flow_counter, rel.offset + 12, "<I", 0xFFFF))
    # a relocation on an instruction that is neither ld_imm64 nor call
    with pytest.raises(ObjectError, match="neither ld_imm64 nor call"):
        read_collection(patched(flow_counter, rel.offset, "<Q", 0))
    # a function symbol that runs past its section
    symtab = next(s for s in elf.sections if s.name == ".symtab")
    sym = next(s for s in elf.symbols if s.name == "count_egress")
    with pytest.raises(ObjectError, match=r"function 'count_egress': instructions .* outside the section"):
        read_collection(patched(flow_counter, symtab.offset + sym.index * 24 + 16, "<Q", 4096))


def test_version_and_license(compile_bpf: CompileBpf) -> None:
    src = """
    SEC("tc") int p(struct __sk_buff *skb) { return 0; }
    __u64 kversion SEC("version") = 1;
    """
    with pytest.raises(ObjectError, match="section version: 8 bytes"):
        read_collection(compile_bpf(src))
    src = """
    SEC("tc") int p(struct __sk_buff *skb) { return 0; }
    char LICENSE[] SEC("license") = "\\xff\\xfe";
    """
    with pytest.raises(ObjectError, match="section license: not a valid UTF-8 string"):
        read_collection(compile_bpf(src))


def test_truncations_never_escape(bpf_objects: BpfObjects) -> None:
    for path in bpf_objects.paths():
        data = path.read_bytes()
        for end in range(0, len(data), 61):
            with contextlib.suppress(ObjectError):
                read_collection(data[:end])


def test_global_data_reference_outside_its_section(compile_bpf: CompileBpf) -> None:
    src = """
    static volatile __u64 pair[2] = {1, 2};
    SEC("tc") int p(struct __sk_buff *skb) { return pair[1]; }
    char LICENSE[] SEC("license") = "GPL";
    """
    path = compile_bpf(src)
    data = path.read_bytes()
    prog = read_collection(data).programs["p"]
    (rel,) = prog.relocations
    tc = ElfObject(data).by_name["tc"]
    imm_at = tc.offset + rel.insn * 8 + 4  # the program calls nothing: linked index = section index
    with pytest.raises(ObjectError, match=r"at offset 16 is outside section \.data \(16 bytes\)"):
        read_collection(patched(data, imm_at, "<i", 16))
    with pytest.raises(ObjectError, match=r"at offset -8 is outside"):
        read_collection(patched(data, imm_at, "<i", -8))
