"""Programs: the functions of executable sections, linked with the subprograms they call.

libbpf's bpf_object__reloc_code, minus the kernel: a program is copied, then every ``.text``
function it reaches by a bpf-to-bpf call (``call`` with src_reg BPF_PSEUDO_CALL) is appended once,
transitively, and each call's imm is rewritten to the relative offset of its target in the linked
program. Taking a function's address (``ld_imm64`` relocated against code: a callback for bpf_loop and
friends) is refused: the kernel needs BTF func_info for callbacks, and the loader loads none. Map and
global data references (``ld_imm64`` relocated against a map or data symbol) of the program and of
every appended subprogram become ``MapRelocation``s with linked instruction indexes; their
instructions are left for ``ProgramSpec.instructions_with_fds`` to bind.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object import insn as I
from bpfshare.object.btf_ext import CoreRelocation as CoreRecord
from bpfshare.object.elf import SHN_UNDEF, STT_FUNC, STT_SECTION, ElfObject, Relocation, Section, Symbol
from bpfshare.spec import CoreKind, CoreRelocation, MapRelocation, RelocationKind

R_BPF_NONE = 0
R_BPF_64_64 = 1  # ld_imm64
R_BPF_64_32 = 10  # call


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

    def resolve(self, sym: Symbol, imm: int, where: str) -> tuple[str, RelocationKind, int]:
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


class Linker:
    def __init__(self, elf: ElfObject, targets: DataTargets) -> None:
        # .BTF.ext core_relo records by ELF section name (set by the reader).
        self.core_records: dict[str, list[CoreRecord]] = {}
        self._placements: dict[tuple[int, int], dict[tuple[int, int], int]] = {}
        self.elf = elf
        self.targets = targets
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

    # -- linking --------------------------------------------------------------------------------
    def link(self, program: Function) -> tuple[bytes, tuple[MapRelocation, ...]]:
        """The program's linked instructions and its map relocations."""
        job = _Job(self, program)
        self._placements[(program.section.index, program.start)] = job.placed
        return bytes(job.code), tuple(job.relocations)

    def core_relocations(self, program: Function) -> tuple[CoreRelocation, ...]:
        """The CO-RE relocations of a linked program (after ``link``), on linked instruction
        indexes: its own, then those of every subprogram appended to it, which follow it (libbpf
        bpf_object__relocate_core works on the linked program the same way)."""
        placed = self._placements.get((program.section.index, program.start))
        if placed is None:
            placed = _Job(self, program).placed
        out: list[CoreRelocation] = []
        for (shndx, start), base in sorted(placed.items(), key=lambda item: item[1]):
            section = self.elf.sections[shndx]
            func = self._function_at(shndx, start, f"section {section.name}")
            for rec in self.core_records.get(section.name, ()):
                index = rec.insn_off // I.INSN_SIZE
                if func.start <= index < func.end:
                    out.append(CoreRelocation(base + index - func.start, CoreKind(rec.kind), rec.type_id, rec.access))
        return tuple(out)


class _Job:
    """One program being linked."""

    def __init__(self, linker: Linker, program: Function) -> None:
        self.linker = linker
        self.program = program
        self.code = bytearray(program.code)
        self.placed: dict[tuple[int, int], int] = {(program.section.index, program.start): 0}
        self.relocations: list[MapRelocation] = []
        queue = [(program, 0)]
        while queue:
            func, base = queue.pop(0)
            self._relocate(func, base, queue)

    def _place(self, target: tuple[int, int], where: str, queue: list[tuple[Function, int]]) -> int:
        """Index in the linked program of section instruction ``target``, appending its function."""
        func = self.linker._function_at(target[0], target[1], where)
        key = (func.section.index, func.start)
        if key not in self.placed:
            self.placed[key] = len(self.code) // I.INSN_SIZE
            self.code += func.code
            queue.append((func, self.placed[key]))
        return self.placed[key] + target[1] - func.start

    def _describe(self, func: Function) -> str:
        if func is self.program:
            return f"program {func.name!r} (section {func.section.name})"
        return f"program {self.program.name!r}: subprogram {func.name!r} (section {func.section.name})"

    def _relocate(self, func: Function, base: int, queue: list[tuple[Function, int]]) -> None:
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
                self._ld_imm64(func, base, i, rel, where, queue)
            elif op == I.CALL:
                self._call(func, base, i, rel, where, queue)
            elif rel is not None:
                raise ObjectError(
                    f"{where}: relocation of type {rel.type} against {rel.symbol.describe()} "
                    f"on opcode {op:#04x}, which is neither ld_imm64 nor call"
                )

    def _ld_imm64(
        self, func: Function, base: int, i: int, rel: Relocation | None, where: str, queue: list[tuple[Function, int]]
    ) -> None:
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
        if sym.shndx == SHN_UNDEF:
            _refuse_unnamed(sym, where)
            raise UnsupportedError(f"unsupported: extern {sym.name!r} (__ksym/__kconfig) used by {where}")
        at = base + i
        sections = self.linker.elf.sections
        if sym.shndx < len(sections) and sections[sym.shndx].executable:
            # A callback (bpf_loop, bpf_for_each_map_elem, timers): the kernel insists on BTF
            # func_info for it ("missing btf func_info"), which bpfshare does not load.
            target = sym.describe()
            if (sym.value + imm) % I.INSN_SIZE == 0:
                func_at = self.linker._function_at(sym.shndx, (sym.value + imm) // I.INSN_SIZE, where)
                target = f"function {func_at.name!r}"
            raise UnsupportedError(
                f"unsupported: callback: address of {target} taken in {where} "
                "(callbacks need BTF func_info, which bpfshare does not load)"
            )
        name, kind, offset = self.linker.targets.resolve(sym, imm, where)
        I.set_imm(self.code, at, 0)
        I.set_imm(self.code, at + 1, 0)
        self.relocations.append(MapRelocation(insn=at, map_name=name, kind=kind, offset=offset))

    def _call(
        self, func: Function, base: int, i: int, rel: Relocation | None, where: str, queue: list[tuple[Function, int]]
    ) -> None:
        src, imm = I.src_reg(func.code, i), I.imm(func.code, i)
        if rel is not None:
            sym = rel.symbol
            if sym.shndx == SHN_UNDEF:
                _refuse_unnamed(sym, where)
                raise UnsupportedError(f"unsupported: kfunc call to {sym.name!r} in {where}")
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
        dest = self._place(target, where, queue)
        I.set_imm(self.code, base + i, dest - (base + i) - 1)
