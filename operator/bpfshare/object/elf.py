"""The ELF layer: header (pyelftools), section headers, symbols and relocations (struct).

Only what a relocatable eBPF object (EM_BPF, ELFCLASS64, little-endian, ET_REL) needs. pyelftools
validates and decodes the ELF header; the section header table, the symbol table and the relocation
tables are decoded with ``struct.iter_unpack``, which is an order of magnitude faster than pyelftools'
per-entry parsing and keeps parsing an object well under a millisecond.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass
from functools import cached_property

from elftools.common.utils import struct_parse
from elftools.elf.structs import ELFStructs

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object.guard import cstring, guard

EM_BPF = 247
ET_REL = 1

SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4

STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2

SHN_UNDEF = 0
# Larger than any array map value the kernel accepts (KMALLOC_MAX_SIZE): a .bss this big is malformed.
MAX_NOBITS_SIZE = 1 << 24
SHN_LORESERVE = 0xFF00

_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")


@functools.cache
def _elf64_le_structs() -> ELFStructs:
    """pyelftools' ELF64 little-endian layouts: building them costs a sixth of reading an object,
    and they are stateless, so they are built once."""
    structs = ELFStructs(little_endian=True, elfclass=64)
    structs.create_basic_structs()
    return structs


@dataclass(frozen=True, slots=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int

    @property
    def executable(self) -> bool:
        return self.type == SHT_PROGBITS and bool(self.flags & SHF_EXECINSTR)


@dataclass(frozen=True, slots=True)
class Symbol:
    index: int
    name: str
    type: int
    bind: int
    shndx: int
    value: int
    size: int

    def describe(self) -> str:
        return f"symbol {self.name!r}" if self.name else f"symbol #{self.index}"


@dataclass(frozen=True, slots=True)
class Relocation:
    offset: int  # byte offset in the target section
    type: int
    symbol: Symbol


class ElfObject:
    """A parsed relocatable eBPF ELF object. Every accessor raises ``ObjectError`` on malformed input."""

    def __init__(self, data: bytes) -> None:
        self.raw = data
        with guard("ELF header"):
            self._read_header()
        with guard("section header table"):
            self.sections = self._read_sections()
        self.by_name: dict[str, Section] = {}
        for sec in self.sections:
            self.by_name.setdefault(sec.name, sec)

    # -- header ---------------------------------------------------------------------------------
    def _read_header(self) -> None:
        data = self.raw
        if len(data) < 64 or data[:4] != b"\x7fELF":
            raise ObjectError("not an ELF object (bad magic or shorter than an ELF header)")
        if data[4] != 2:
            raise ObjectError(f"not a 64-bit ELF object (EI_CLASS {data[4]}); eBPF objects are ELFCLASS64")
        if data[5] == 2:
            raise UnsupportedError("unsupported: big-endian eBPF object (compiled for bpfeb)")
        if data[5] != 1:
            raise ObjectError(f"bad ELF data encoding (EI_DATA {data[5]})")
        hdr = struct_parse(_elf64_le_structs().Elf_Ehdr, io.BytesIO(data), 0)
        if hdr["e_machine"] not in ("EM_BPF", EM_BPF):
            raise ObjectError(f"not an eBPF object: e_machine is {hdr['e_machine']}, not EM_BPF")
        if hdr["e_type"] not in ("ET_REL", ET_REL):
            raise ObjectError(f"not a relocatable object: e_type is {hdr['e_type']}, not ET_REL")
        if hdr["e_shentsize"] != _SHDR.size:
            raise ObjectError(f"bad section header size {hdr['e_shentsize']} (expected {_SHDR.size})")
        self._shoff: int = hdr["e_shoff"]
        self._shnum: int = hdr["e_shnum"]
        self._shstrndx: int = hdr["e_shstrndx"]

    def _read_sections(self) -> list[Section]:
        shoff, shnum = self._shoff, self._shnum
        if shnum == 0 or shoff == 0:
            raise ObjectError("the object has no section header table")
        end = shoff + shnum * _SHDR.size
        if end > len(self.raw):
            raise ObjectError(
                f"section header table ({shnum} entries at offset {shoff}) extends beyond the end of the file"
            )
        headers = list(_SHDR.iter_unpack(self.raw[shoff:end]))
        if not 0 < self._shstrndx < shnum:
            raise ObjectError(f"bad section name string table index {self._shstrndx}")
        _, _, _, _, str_off, str_size, *_ = headers[self._shstrndx]
        names = self._slice(str_off, str_size, "section name string table")
        sections = []
        for index, header in enumerate(headers):
            name_off, typ, flags, _addr, off, size, link, info, _align, entsize = header
            name = cstring(names, name_off, f"section #{index} name") if index else ""
            sections.append(Section(index, name, typ, flags, off, size, link, info, entsize))
        return sections

    def _slice(self, offset: int, size: int, what: str) -> bytes:
        if offset + size > len(self.raw):
            raise ObjectError(f"{what} (offset {offset}, {size} bytes) extends beyond the end of the file")
        return self.raw[offset : offset + size]

    # -- sections ---------------------------------------------------------------------------------
    def section(self, index: int, where: str) -> Section:
        if not 0 < index < len(self.sections):
            raise ObjectError(f"{where}: section index {index} out of range")
        return self.sections[index]

    def data(self, sec: Section) -> bytes:
        """A section's bytes (zeros for SHT_NOBITS)."""
        if sec.type == SHT_NOBITS:
            if sec.size > MAX_NOBITS_SIZE:
                raise ObjectError(f"section {sec.name}: size {sec.size} exceeds {MAX_NOBITS_SIZE} bytes")
            return bytes(sec.size)
        return self._slice(sec.offset, sec.size, f"section {sec.name}")

    # -- symbols ----------------------------------------------------------------------------------
    @cached_property
    def symbols(self) -> list[Symbol]:
        symtabs = [s for s in self.sections if s.type == SHT_SYMTAB]
        if not symtabs:
            raise ObjectError("the object has no symbol table (.symtab)")
        symtab = symtabs[0]
        where = f"symbol table {symtab.name}"
        if symtab.entsize not in (0, _SYM.size) or symtab.size % _SYM.size:
            raise ObjectError(f"{where}: bad entry size {symtab.entsize} or size {symtab.size}")
        strtab = self.section(symtab.link, f"{where} string table")
        names = self.data(strtab) if strtab.type == SHT_STRTAB else b""
        out = []
        with guard(where):
            for index, (name_off, info, _other, shndx, value, size) in enumerate(_SYM.iter_unpack(self.data(symtab))):
                typ = info & 0xF
                if typ == STT_SECTION and 0 < shndx < len(self.sections):
                    name = self.sections[shndx].name
                else:
                    name = cstring(names, name_off, f"{where} entry #{index}")
                out.append(Symbol(index, name, typ, info >> 4, shndx, value, size))
        return out

    # -- relocations ------------------------------------------------------------------------------
    @cached_property
    def _rel_sections(self) -> dict[int, list[Section]]:
        out: dict[int, list[Section]] = {}
        for sec in self.sections:
            if sec.type in (SHT_REL, SHT_RELA):
                out.setdefault(sec.info, []).append(sec)
        return out

    def has_relocations(self, target: Section) -> bool:
        return target.index in self._rel_sections

    def relocations(self, target: Section) -> list[Relocation]:
        """The relocations that apply to ``target``, in file order."""
        out = []
        symbols = self.symbols
        for rel in self._rel_sections.get(target.index, []):
            where = f"relocation section {rel.name}"
            if rel.type == SHT_RELA:
                raise UnsupportedError(f"unsupported: RELA relocations ({rel.name}) for section {target.name}")
            if rel.size % _REL.size:
                raise ObjectError(f"{where}: size {rel.size} is not a multiple of {_REL.size}")
            for offset, info in _REL.iter_unpack(self.data(rel)):
                sym_index = info >> 32
                if not 0 <= sym_index < len(symbols):
                    raise ObjectError(
                        f"{where}: relocation at offset {offset} names symbol #{sym_index}, "
                        f"but the symbol table has {len(symbols)} entries"
                    )
                out.append(Relocation(offset, info & 0xFFFFFFFF, symbols[sym_index]))
        return out
