"""Programs: the functions of executable sections, linked with the subprograms they call.

libbpf's bpf_object__reloc_code, minus the kernel: a program is copied, then every ``.text``
function it reaches by a bpf-to-bpf call (``call`` with src_reg BPF_PSEUDO_CALL) or whose address it
takes (``ld_imm64`` relocated against code: a callback for bpf_loop and friends, which becomes
src_reg BPF_PSEUDO_FUNC, as libbpf's RELO_SUBPROG_ADDR) is appended once, transitively, and each
call's or address's imm is rewritten to the relative offset of its target in the linked program.
Map and global data references (``ld_imm64`` relocated against a map or data symbol) of the program
and of every appended subprogram become ``MapRelocation``s with linked instruction indexes; their
instructions are left for ``ProgramSpec.instructions_with_fds`` to bind.

Externs (undefined symbols, see ``externs``): a ``__kconfig`` value becomes a MAP_VALUE reference
into the ``.kconfig`` map; a ``__ksym`` variable or kfunc call becomes an ``ExternRelocation`` that
the loader resolves against the running kernel. An undefined function declared neither ``__ksym``
is an extern function only static linking resolves, and is reported as such.

The BTF func_info and line_info records of the program and of every appended subprogram are
rebased to the linked instruction indexes (libbpf's adjust_prog_btf_ext_info): the kernel needs
func_info for a program with callbacks.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object import insn as I
from bpfshare.object.btf_ext import CoreRelocation as CoreRecord
from bpfshare.object.elf import SHN_UNDEF, STT_FUNC, STT_SECTION, ElfObject, Relocation, Section, Symbol
from bpfshare.object.externs import KSYMS_SEC, Extern
from bpfshare.spec import (
    KCONFIG_MAP,
    CoreKind,
    CoreRelocation,
    ExternKind,
    ExternRelocation,
    MapRelocation,
    RelocationKind,
)

R_BPF_NONE = 0
R_BPF_64_64 = 1  # ld_imm64
R_BPF_64_32 = 10  # call
PSEUDO_FUNC = 4  # BPF_PSEUDO_FUNC: ld_imm64 of a subprogram's address, imm = relative insn offset
# func_info / line_info records by ELF section: (byte offset of the instruction, rest of the record)
ExtInfo = dict[str, list[tuple[int, bytes]]]
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class Linked:
    """A linked program: its instructions and everything recorded on linked instruction indexes."""

    code: bytes
    relocations: tuple[MapRelocation, ...]
    externs: tuple[ExternRelocation, ...] = ()
    callbacks: bool = False  # takes a function's address: the kernel then needs BTF func_info
    func_info: bytes = b""
    line_info: bytes = b""
    core_relocations: tuple[CoreRelocation, ...] = ()


@dataclass(frozen=True)
class Function:
    name: str
    section: Section
    start: int  # instruction index in the section
    end: int  # exclusive
    code: bytes

    def describe(self) -> str:
        return f"function {self.name!r} (section {self.section.name})"


@dataclass
class DataTargets:
    """Where ld_imm64 relocations may point: maps (by section and offset) and global data sections."""

    maps: dict[tuple[int, int], str] = field(default_factory=dict)  # (shndx, offset) -> map name
    map_sections: set[int] = field(default_factory=set)
    data: dict[int, tuple[str, int]] = field(default_factory=dict)  # shndx -> (map name, value size)
    # Sections bpfshare cannot load (reader.UNSUPPORTED_SECTIONS) -> why: a program referring to
    # one is refused with that reason, the object's other programs are not.
    refused: dict[int, str] = field(default_factory=dict)

    def resolve(self, sym: Symbol, imm: int, where: str) -> tuple[str, RelocationKind, int]:
        if sym.shndx in self.refused:
            raise UnsupportedError(f"{self.refused[sym.shndx]}, used by {where}")
        if sym.shndx in self.data:
            data_map, size = self.data[sym.shndx]
            offset = sym.value + imm
            if not 0 <= offset < size:
                raise ObjectError(
                    f"{where}: reference to {sym.describe()} at offset {offset} is outside "
                    f"section {data_map} ({size} bytes)"
                )
            return data_map, RelocationKind.MAP_VALUE, offset
        if sym.shndx in self.map_sections:
            offset = sym.value + (imm if sym.type == STT_SECTION else 0)
            map_name = self.maps.get((sym.shndx, offset))
            if map_name is None:
                raise ObjectError(
                    f"{where}: reference to {sym.describe()} at offset {offset} of a map "
                    "section matches no map definition"
                )
            return map_name, RelocationKind.MAP_FD, 0
        raise ObjectError(
            f"{where}: reference to {sym.describe()} in section #{sym.shndx}, "
            "which holds neither maps, global data nor code"
        )


def _refuse_unnamed(sym: Symbol, where: str) -> None:
    """An undefined symbol is an extern or a kfunc, named; without a name (the null symbol #0, say)
    the relocation is corrupt, not the use of a feature bpfshare lacks."""
    if not sym.name:
        raise ObjectError(f"{where}: relocation against {sym.describe()}, which is undefined and has no name")


def _set_src_reg(code: bytearray, index: int, src: int) -> None:
    off = index * I.INSN_SIZE + 1
    code[off] = (code[off] & 0x0F) | (src << 4)


def extern_function_error(name: str, where: str) -> UnsupportedError:
    """Item 7 of issue 13: an undefined function with no __ksym declaration is not a kfunc."""
    return UnsupportedError(
        f"unsupported: function {name!r} (called in {where}) is extern: link the object with "
        "bpftool gen object / the static linker first (it is not declared __ksym, so it is no kfunc)"
    )


class Linker:
    def __init__(
        self,
        elf: ElfObject,
        targets: DataTargets,
        externs: Callable[[], dict[str, Extern]] | None = None,
        ext_info: Callable[[], tuple[ExtInfo, ExtInfo]] | None = None,
    ) -> None:
        # .BTF.ext core_relo records by ELF section name (set by the reader).
        self.core_records: dict[str, list[CoreRecord]] = {}
        self.elf = elf
        self.targets = targets
        self._externs = externs
        self._ext_info = ext_info
        self._functions: dict[int, list[Function]] = {}
        self._relocations: dict[int, dict[int, Relocation]] = {}

    # -- functions ------------------------------------------------------------------------------
    def functions(self, section: Section) -> list[Function]:
        """The functions of an executable section, by start."""
        if section.index in self._functions:
            return self._functions[section.index]
        code = self.elf.data(section)
        if len(code) % I.INSN_SIZE:
            raise ObjectError(f"section {section.name}: size {len(code)} is not a multiple of {I.INSN_SIZE}")
        count = len(code) // I.INSN_SIZE
        syms = sorted(
            (s for s in self.elf.symbols if s.shndx == section.index and s.type == STT_FUNC), key=lambda s: s.value
        )
        out: list[Function] = []
        for n, sym in enumerate(syms):
            where = f"section {section.name}: function {sym.name!r}"
            if sym.value % I.INSN_SIZE or sym.size % I.INSN_SIZE:
                raise ObjectError(f"{where}: offset {sym.value} or size {sym.size} is not instruction-aligned")
            start = sym.value // I.INSN_SIZE
            if sym.size:
                end = start + sym.size // I.INSN_SIZE
            else:  # no size (hand-written assembly): up to the next function
                end = syms[n + 1].value // I.INSN_SIZE if n + 1 < len(syms) else count
            if not start < end <= count:
                raise ObjectError(f"{where}: instructions {start}..{end} are outside the section ({count})")
            if out and start < out[-1].end:
                raise ObjectError(f"{where}: overlaps function {out[-1].name!r}")
            out.append(Function(sym.name, section, start, end, code[start * I.INSN_SIZE : end * I.INSN_SIZE]))
        if not out and count and section.name != ".text":
            raise ObjectError(f"section {section.name}: {count} instructions but no function symbol")
        self._functions[section.index] = out
        return out

    def _function_at(self, shndx: int, index: int, where: str) -> Function:
        section = self.elf.section(shndx, where)
        if not section.executable:
            raise ObjectError(f"{where}: target is in section {section.name}, which holds no code")
        funcs = self.functions(section)
        pos = bisect.bisect_right([f.start for f in funcs], index) - 1
        if pos < 0 or not funcs[pos].start <= index < funcs[pos].end:
            raise ObjectError(f"{where}: target instruction {index} of section {section.name} is in no function")
        return funcs[pos]

    def _section_relocations(self, section: Section) -> dict[int, Relocation]:
        if section.index not in self._relocations:
            by_insn: dict[int, Relocation] = {}
            for rel in self.elf.relocations(section):
                if rel.type == R_BPF_NONE:
                    continue
                if rel.offset % I.INSN_SIZE or rel.offset >= section.size:
                    raise ObjectError(
                        f"section {section.name}: relocation at offset {rel.offset} does not point at an instruction"
                    )
                by_insn[rel.offset // I.INSN_SIZE] = rel
            self._relocations[section.index] = by_insn
        return self._relocations[section.index]

    def extern(self, sym: Symbol, where: str) -> Extern:
        _refuse_unnamed(sym, where)
        externs = self._externs() if self._externs is not None else {}
        ext = externs.get(sym.name)
        if ext is None:  # not an extern symbol (a local undefined symbol, say)
            raise ObjectError(f"{where}: relocation against {sym.describe()}, which is undefined and not an extern")
        return ext

    # -- linking --------------------------------------------------------------------------------
    def link(self, program: Function) -> Linked:
        """The program's linked instructions and what they refer to."""
        job = _Job(self, program)
        func_info = line_info = b""
        if job.callbacks and self._ext_info is not None:
            funcs, lines = self._ext_info()
            func_info = job.rebase(funcs)
            line_info = job.rebase(lines)
        return Linked(
            bytes(job.code),
            tuple(job.relocations),
            tuple(job.externs),
            job.callbacks,
            func_info,
            line_info,
            job.core_relocations(),
        )


class _Job:
    """One program being linked."""

    def __init__(self, linker: Linker, program: Function) -> None:
        self.linker = linker
        self.program = program
        self.code = bytearray(program.code)
        self.placed: dict[tuple[int, int], int] = {(program.section.index, program.start): 0}
        self.relocations: list[MapRelocation] = []
        self.externs: list[ExternRelocation] = []
        self.callbacks = False
        self.order: list[tuple[Function, int]] = []  # every placed function and its base
        self._pending: tuple[Function, int] | None = None  # placed by the current instruction
        # Depth first, as libbpf's bpf_object__reloc_code recurses into a subprogram when it
        # appends it: the same order gives the same instructions (and program tag) as libbpf. A
        # stack of the functions being relocated, not recursion: a call chain as long as an
        # object's function count cannot exhaust Python's stack.
        stack = [self._relocate(program, 0)]
        while stack:
            placed = next(stack[-1], None)
            if placed is None:
                stack.pop()
            else:
                stack.append(self._relocate(*placed))

    def core_relocations(self) -> tuple[CoreRelocation, ...]:
        """The CO-RE relocations of the linked program, on linked instruction indexes: its own, then
        those of every subprogram appended to it, which follow it (libbpf bpf_object__relocate_core
        works on the linked program the same way)."""
        out: list[CoreRelocation] = []
        for func, base in sorted(self.order, key=lambda item: item[1]):
            for rec in self.linker.core_records.get(func.section.name, ()):
                index = rec.insn_off // I.INSN_SIZE
                if func.start <= index < func.end:
                    out.append(CoreRelocation(base + index - func.start, CoreKind(rec.kind), rec.type_id, rec.access))
        return tuple(out)

    def rebase(self, info: ExtInfo) -> bytes:
        """The records of every placed function, their instruction offsets made linked indexes
        (libbpf's adjust_prog_btf_ext_info), in instruction order."""
        out: list[tuple[int, bytes]] = []
        for func, base in self.order:
            for byte_off, rest in info.get(func.section.name, ()):
                index = byte_off // I.INSN_SIZE
                if byte_off % I.INSN_SIZE == 0 and func.start <= index < func.end:
                    out.append((index - func.start + base, rest))
        out.sort(key=lambda r: r[0])
        return b"".join(_U32.pack(insn) + rest for insn, rest in out)

    def _place(self, target: tuple[int, int], where: str) -> int:
        """Index in the linked program of section instruction ``target``, appending its function."""
        func = self.linker._function_at(target[0], target[1], where)
        key = (func.section.index, func.start)
        if key not in self.placed:
            self.placed[key] = len(self.code) // I.INSN_SIZE
            self.code += func.code
            self._pending = (func, self.placed[key])
        return self.placed[key] + target[1] - func.start

    def _describe(self, func: Function) -> str:
        if func is self.program:
            return f"program {func.name!r} (section {func.section.name})"
        return f"program {self.program.name!r}: subprogram {func.name!r} (section {func.section.name})"

    def _relocate(self, func: Function, base: int) -> Iterator[tuple[Function, int]]:
        """Relocate a placed function's instructions, yielding each function it places (to be
        relocated before its next instruction)."""
        self.order.append((func, base))
        code = func.code
        count = len(code) // I.INSN_SIZE
        section_relocs = self.linker._section_relocations(func.section)
        relocs = {i - func.start: r for i, r in section_relocs.items() if func.start <= i < func.end}
        interesting = sorted({*I.opcode_indexes(code, I.LD_IMM64), *I.opcode_indexes(code, I.CALL), *relocs})
        second_half = -1
        for i in interesting:
            where = f"{self._describe(func)} instruction {i}"
            if i == second_half:
                if i in relocs:
                    raise ObjectError(f"{where}: relocation against the second half of an ld_imm64")
                continue
            op = code[i * I.INSN_SIZE]
            rel = relocs.get(i)
            if op == I.LD_IMM64:
                second_half = i + 1
                if i + 1 >= count:
                    raise ObjectError(f"{where}: ld_imm64 truncated by the end of the function")
                self._ld_imm64(func, base, i, rel, where)
            elif op == I.CALL:
                self._call(func, base, i, rel, where)
            elif rel is not None:
                raise ObjectError(
                    f"{where}: relocation of type {rel.type} against {rel.symbol.describe()} "
                    f"on opcode {op:#04x}, which is neither ld_imm64 nor call"
                )
            if self._pending is not None:
                placed, self._pending = self._pending, None
                yield placed

    def _ld_imm64(self, func: Function, base: int, i: int, rel: Relocation | None, where: str) -> None:
        src = I.src_reg(func.code, i)
        if rel is None:
            if src != 0:
                raise UnsupportedError(
                    f"unsupported: {where}: ld_imm64 with pseudo source register {src} and no relocation"
                )
            return
        if rel.type != R_BPF_64_64:
            raise UnsupportedError(f"unsupported: {where}: relocation type {rel.type} on an ld_imm64")
        sym, imm = rel.symbol, I.imm(func.code, i)
        at = base + i
        if sym.shndx == SHN_UNDEF:
            self._extern_ld_imm64(self.linker.extern(sym, where), at, where)
            return
        sections = self.linker.elf.sections
        if sym.shndx < len(sections) and sections[sym.shndx].executable:
            # A callback (bpf_loop, bpf_for_each_map_elem, timers): libbpf's RELO_SUBPROG_ADDR.
            # Global function: st_value is its offset, imm 0; static: the section symbol, imm is
            # the offset. Both in bytes.
            if sym.value % I.INSN_SIZE or imm % I.INSN_SIZE:
                raise ObjectError(f"{where}: address of {sym.describe()} + {imm} is not instruction-aligned")
            dest = self._place((sym.shndx, (sym.value + imm) // I.INSN_SIZE), where)
            _set_src_reg(self.code, at, PSEUDO_FUNC)
            I.set_imm(self.code, at, dest - at - 1)
            I.set_imm(self.code, at + 1, 0)
            self.callbacks = True
            return
        name, kind, offset = self.linker.targets.resolve(sym, imm, where)
        I.set_imm(self.code, at, 0)
        I.set_imm(self.code, at + 1, 0)
        self.relocations.append(MapRelocation(insn=at, map_name=name, kind=kind, offset=offset))

    def _extern_ld_imm64(self, ext: Extern, at: int, where: str) -> None:
        """libbpf's RELO_EXTERN_LD64, minus the kernel: the immediates are left zero (a weak
        extern that does not resolve stays so) for the loader to fill."""
        I.set_imm(self.code, at, 0)
        I.set_imm(self.code, at + 1, 0)
        if ext.kconfig is not None:
            # The .kconfig map's value at the extern's offset (BPF_PSEUDO_MAP_VALUE).
            self.relocations.append(MapRelocation(at, KCONFIG_MAP, RelocationKind.MAP_VALUE, ext.kconfig.offset))
        elif ext.section == KSYMS_SEC:
            self.externs.append(
                ExternRelocation(at, ext.name, ExternKind.KSYM, ext.typed, ext.is_func, ext.weak, ext.proto)
            )
        elif ext.is_func:
            raise extern_function_error(ext.name, where)
        else:
            raise UnsupportedError(
                f"unsupported: extern variable {ext.name!r} used by {where} is declared neither __ksym "
                "nor __kconfig: link the object with bpftool gen object / the static linker first"
            )

    def _call(self, func: Function, base: int, i: int, rel: Relocation | None, where: str) -> None:
        src, imm = I.src_reg(func.code, i), I.imm(func.code, i)
        if rel is not None:
            sym = rel.symbol
            if sym.shndx == SHN_UNDEF:
                ext = self.linker.extern(sym, where)
                if ext.section != KSYMS_SEC or not ext.is_func:
                    raise extern_function_error(ext.name, where)
                # A kfunc (libbpf's RELO_EXTERN_CALL): imm and off are the loader's to fill.
                _set_src_reg(self.code, base + i, I.PSEUDO_KFUNC_CALL)
                I.set_imm(self.code, base + i, 0)
                self.externs.append(
                    ExternRelocation(base + i, ext.name, ExternKind.KFUNC_CALL, True, True, ext.weak, ext.proto)
                )
                return
            if rel.type != R_BPF_64_32 or src != I.PSEUDO_CALL:
                raise ObjectError(
                    f"{where}: relocation type {rel.type} against {sym.describe()} on a call with source register {src}"
                )
            if sym.value % I.INSN_SIZE:
                raise ObjectError(f"{where}: call target {sym.describe()} is not instruction-aligned")
            target = (sym.shndx, sym.value // I.INSN_SIZE + imm + 1)
        elif src == I.PSEUDO_CALL:  # a call within the section: imm is already relative
            target = (func.section.index, func.start + i + imm + 1)
        elif src == I.PSEUDO_KFUNC_CALL:
            raise UnsupportedError(f"unsupported: kfunc call (btf id {imm}) in {where}")
        else:
            return  # a helper call
        dest = self._place(target, where)
        I.set_imm(self.code, base + i, dest - (base + i) - 1)
