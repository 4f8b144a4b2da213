"""Malformed objects: always an ObjectError that says what is wrong and where, never another exception."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object import read_collection
from bpfshare.object.elf import ElfObject
from tests.fixtures.objects import BpfObjects, CompileBpf
from tests.unit.untrusted import read_untrusted

SHDR_SIZE = 64
SH_SIZE = 0x20  # offset of sh_size in a section header


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
    # (a corrupt relocation of one instruction refuses the programs using it, not the object)
    # a relocation against the null symbol: corrupt, not an extern
    with pytest.raises(ObjectError, match=r"instruction \d+: relocation against symbol #0, which is undefined") as exc:
        read_collection(patched(flow_counter, rel.offset + 12, "<I", 0)).program("count_ingress")
    assert not isinstance(exc.value, UnsupportedError)
    # a relocation on an instruction that is neither ld_imm64 nor call
    with pytest.raises(ObjectError, match="neither ld_imm64 nor call"):
        spec = read_collection(patched(flow_counter, rel.offset, "<Q", 0))
        assert "count_egress" not in spec.refused_programs  # another section's program still loads
        spec.program("count_ingress")
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


def test_truncated_files(bpf_objects: BpfObjects) -> None:
    """The section header table is at the end of what clang writes: any shorter file lacks it."""
    for path in bpf_objects.paths():
        data = path.read_bytes()
        for end in range(0, len(data), 61):
            with pytest.raises(ObjectError) as exc:
                read_collection(data[:end])
            if end < 64:
                assert str(exc.value) == "not an ELF object (bad magic or shorter than an ELF header)"
            else:
                assert str(exc.value).endswith(") extends beyond the end of the file"), exc.value
                assert str(exc.value).startswith("section header table ("), exc.value


def with_section_size(data: bytes, index: int, size: int) -> bytes:
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    return patched(data, shoff + index * SHDR_SIZE + SH_SIZE, "<Q", size)


def sizes_below(size: int) -> list[int]:
    """A spread of sizes short of ``size``: the edges (empty, one byte, one byte short), one or two
    4-byte words short (a record cut at a field boundary), and half."""
    return sorted({0, 1, size // 2, size - 8, size - 4, size - 1} & set(range(size)))


# Sections whose every byte the reader relies on: any cut must be refused. (Others may be cut and
# still read: the license, .llvm_addrsig, .BTF.ext's func and line info, trailing relocations.)
ESSENTIAL = (".symtab", ".strtab", "maps", ".maps")


def test_truncated_sections(bpf_objects: BpfObjects) -> None:
    """Every section the reader decodes, cut short in place: a consistent spec or an error saying where."""
    for path in bpf_objects.paths():
        data = path.read_bytes()
        for sec in ElfObject(data).sections[1:]:
            if sec.name.startswith((".debug", ".rel.debug")):
                continue
            for size in sizes_below(sec.size):
                outcome = read_untrusted(with_section_size(data, sec.index, size))
                if sec.executable or sec.name in ESSENTIAL:
                    assert isinstance(outcome, ObjectError), f"{path.name}: {sec.name} cut to {size} bytes was read"


def map_beyond(section: str, definition: int, cut: int) -> str:
    where = re.escape(f"section {section}: map 'shared_counts' at offset 0 ({definition} bytes)")
    return where + re.escape(f" extends beyond the section ({cut} bytes)")


BTF_TYPES_BEYOND = r"\.BTF: type section \(offset 0, \d+ bytes\) extends beyond the section \(30 bytes\)"
FUNCTION_OUTSIDE = r"section tc: function 'count_\w+': instructions \d+\.\.\d+ are outside the section \(1\)"


@pytest.mark.parametrize(
    ("example", "section", "size", "message"),
    [
        ("flow_counter", ".BTF", 20, r"\.BTF: shorter than the BTF header \(20 bytes\)"),
        ("flow_counter", ".BTF", 30, BTF_TYPES_BEYOND),
        ("flow_counter", ".BTF.ext", 8, r"\.BTF\.ext: shorter than its header \(8 bytes\)"),
        ("flow_counter", ".symtab", 25, r"symbol table \.symtab: bad entry size 24 or size 25"),
        ("flow_counter", ".strtab", 8, r"section #\d+ name: string offset \d+ outside the string table \(8 bytes\)"),
        ("flow_counter", ".reltc", 17, r"relocation section \.reltc: size 17 is not a multiple of 16"),
        ("flow_counter", "tc", 12, r"section tc: size 12 is not a multiple of 8"),
        ("flow_counter", "tc", 8, FUNCTION_OUTSIDE),
        ("flow_counter", ".maps", 16, map_beyond(".maps", 40, 16)),  # a BTF map
        ("flow_counter_legacy", "maps", 10, map_beyond("maps", 36, 10)),  # struct bpf_elf_map
        ("cgroup_counter_mapdef", "maps", 12, map_beyond("maps", 20, 12)),  # struct bpf_map_def
    ],
)
def test_truncated_section_messages(
    bpf_objects: BpfObjects, example: str, section: str, size: int, message: str
) -> None:
    data = bpf_objects[example].read_bytes()
    index = ElfObject(data).by_name[section].index
    with pytest.raises(ObjectError, match=f"^{message}$"):
        read_collection(with_section_size(data, index, size))


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
        read_collection(patched(data, imm_at, "<i", 16)).program("p")  # refuses program p
    with pytest.raises(ObjectError, match=r"at offset -8 is outside"):
        read_collection(patched(data, imm_at, "<i", -8)).program("p")


def test_reference_into_a_map_section_between_maps(compile_bpf: CompileBpf) -> None:
    # A static map is referred to through the section symbol, at an offset in the imm: move it off
    # the start of the definition.
    src = """
    #include "legacy_maps.h"
    static struct bpf_map_def SEC("maps") counts = {.type = BPF_MAP_TYPE_ARRAY, .key_size = 4,
                                                   .value_size = 8, .max_entries = 1};
    SEC("tc") int p(struct __sk_buff *skb) { __u32 k = 0; return bpf_map_lookup_elem(&counts, &k) != 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    data = compile_bpf(src).read_bytes()
    (rel,) = read_collection(data).programs["p"].relocations
    elf = ElfObject(data)
    (reloc,) = elf.relocations(elf.by_name["tc"])
    assert reloc.symbol.name == "maps"  # the section symbol: the offset is in the instruction
    imm_at = elf.by_name["tc"].offset + rel.insn * 8 + 4
    with pytest.raises(
        ObjectError,
        match=r"^program 'p' cannot be loaded: program 'p' \(section tc\) instruction \d+: reference to symbol 'maps'",
    ) as exc:
        read_collection(patched(data, imm_at, "<i", 4)).program("p")
    assert str(exc.value).endswith("at offset 4 of a map section matches no map definition")
