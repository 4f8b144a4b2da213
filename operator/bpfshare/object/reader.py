"""ELF object -> ``CollectionSpec``: programs, maps of every definition style, license, version."""

from __future__ import annotations

import dataclasses
import os
import struct
from functools import cached_property
from pathlib import Path

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object.btf import Btf, Kind
from bpfshare.object.btf_ext import CoreRelocation, core_relocations
from bpfshare.object.btf_maps import btf_maps
from bpfshare.object.elf import STT_FILE, STT_SECTION, ElfObject, Section
from bpfshare.object.global_data import global_data_map, is_global_data
from bpfshare.object.guard import guard
from bpfshare.object.legacy import LegacyMap, legacy_maps
from bpfshare.object.link_inputs import LinkInputs
from bpfshare.object.linker import DataTargets, Function, Linker
from bpfshare.object.sections import program_type
from bpfshare.object.slots import check_slots, collect_slots
from bpfshare.spec import CollectionSpec, DefinitionStyle, MapSpec, ProgramSpec, RefusedMap, RefusedProgram
from bpfshare.types import MapType, ProgType

BTF_MAPS_SECTION = ".maps"
LEGACY_MAPS_SECTION = "maps"
UNSUPPORTED_SECTIONS = {
    ".struct_ops": "struct_ops maps",
    ".struct_ops.link": "struct_ops maps",
    ".addr_space.1": "BPF arena variables",
}

Source = str | os.PathLike[str] | bytes | bytearray | memoryview


def read_collection(source: Source) -> CollectionSpec:
    """Parse a relocatable eBPF ELF object (a path, or its bytes) into a ``CollectionSpec``.

    What bpfshare cannot load is refused per program and per map, not per object: a program using
    an unsupported feature (or with a corrupt instruction or relocation of its own), a map whose
    definition cannot be taken, and every program needing one of those, are listed in the spec's
    ``refused_programs`` / ``refused_maps`` with the reason (an ``UnsupportedError``'s or
    ``ObjectError``'s message), and the others load. Raises ``ObjectError`` for what is malformed
    object-wide (the ELF header, the symbol table, a section no definition can be read from, two
    definitions of one name), naming the section, symbol or offset. No other exception escapes.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ObjectError(f"cannot read {os.fspath(source)}: {exc.strerror or exc}") from exc
    with guard("object"):
        return _Reader(data).collection()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.elf = ElfObject(data)
        self._btf: Btf | None = None

    @property
    def btf(self) -> Btf:
        if self._btf is None:
            sec = self.elf.by_name.get(".BTF")
            if sec is None:
                raise ObjectError("the object has no .BTF section (compile with -g)")
            with guard("section .BTF"):
                self._btf = Btf(self._btf_section)
        return self._btf

    @cached_property
    def _btf_section(self) -> bytes:
        """The .BTF section's bytes, sliced once: parsed, and kept by every program with CO-RE relocations."""
        return self.elf.data(self.elf.by_name[".BTF"])

    def collection(self) -> CollectionSpec:
        self.refused_maps: dict[str, RefusedMap] = {}
        self.refused_programs: dict[str, RefusedProgram] = {}
        license = self._license()
        version = self._version()
        targets = DataTargets(refused=self._unsupported_sections())
        maps = self._maps(targets)
        inputs = LinkInputs(self.elf, lambda: self.btf)
        kconfig_map = inputs.kconfig_map()
        if kconfig_map is not None:
            if kconfig_map.name in maps:
                raise ObjectError(f"map {kconfig_map.name!r} is defined twice (a section and the __kconfig externs)")
            maps[kconfig_map.name] = kconfig_map
        maps = self._with_btf(maps, inputs)
        linker = Linker(self.elf, targets, inputs.externs, inputs.ext_info)
        linker.core_records = self._core_records()
        programs, order = self._programs(linker, license, version, inputs)
        maps = self._initial_slots(maps, programs)
        programs = self._refuse_dependents(programs, maps)
        return CollectionSpec(
            maps=maps,
            programs=programs,
            license=license,
            kernel_version=version,
            refused_programs=self.refused_programs,
            refused_maps=self.refused_maps,
            order=order,
            kconfig=inputs.kconfig(),
        )

    # -- what cannot be loaded ------------------------------------------------------------------
    def _unsupported_sections(self) -> dict[int, str]:
        """Sections bpfshare cannot load -> why. Each refuses the programs that refer to it (and
        a struct_ops section's variables, which are maps, are refused by name), not the object.
        (Externs and kfuncs are resolved where a program uses them.)"""
        refused: dict[int, str] = {}
        for name, what in UNSUPPORTED_SECTIONS.items():
            sec = self.elf.by_name.get(name)
            if sec is None:
                continue
            reason = f"unsupported: {what} (section {name})"
            refused[sec.index] = reason
            if name.startswith(".struct_ops"):
                for sym in self.elf.symbols:
                    if sym.shndx == sec.index and sym.type not in (STT_SECTION, STT_FILE) and sym.name:
                        self.refused_maps[sym.name] = RefusedMap(sym.name, name, reason)
        return refused

    def _refuse_dependents(self, programs: dict[str, ProgramSpec], maps: dict[str, MapSpec]) -> dict[str, ProgramSpec]:
        """Refuse every program that needs something refused: a map it uses, or a program or map
        that the initial slots of a map it uses name. Repeated to a fixed point, since refusing a
        tail-call target refuses the programs whose prog array names it."""
        programs = dict(programs)
        changed = True
        while changed:
            changed = False
            for name, prog in list(programs.items()):
                found = self._needs_refused(prog, maps)
                if found is not None:
                    reason, malformed = found
                    del programs[name]
                    self.refused_programs[name] = RefusedProgram(
                        name, prog.section, prog.type, prog.expected_attach_type, reason, prog, malformed
                    )
                    changed = True
        return programs

    def _needs_refused(self, prog: ProgramSpec, maps: dict[str, MapSpec]) -> tuple[str, bool] | None:
        """Why ``prog`` cannot be loaded for what it needs (and whether that is a malformation), or None."""
        for map_name in prog.map_names:
            refused_map = self.refused_maps.get(map_name)
            if refused_map is not None:
                return f"uses map {map_name!r}, which cannot be loaded: {refused_map.reason}", refused_map.malformed
            spec = maps[map_name]
            for index, target in spec.slots:
                refused_target = self.refused_programs.get(target) or self.refused_maps.get(target)
                if refused_target is not None:
                    kind = "program" if spec.type is MapType.ProgArray else "map"
                    return (
                        f"uses map {map_name!r}, whose slot {index} names {kind} {target!r}, which cannot be "
                        f"loaded: {refused_target.reason}"
                    ), refused_target.malformed
        return None

    def _core_records(self) -> dict[str, list[CoreRelocation]]:
        """The .BTF.ext core_relo records by ELF section (resolved at load time, load.core)."""
        sec = self.elf.by_name.get(".BTF.ext")
        if sec is None:
            return {}
        out: dict[str, list[CoreRelocation]] = {}
        with guard("section .BTF.ext"):
            data = self.elf.data(sec)
            relos = core_relocations(data, self.btf if ".BTF" in self.elf.by_name else None)
        for relo in relos:
            out.setdefault(relo.section, []).append(relo)
        return out

    def _license(self) -> str:
        sec = self.elf.by_name.get("license")
        if sec is None:
            return ""
        raw = self.elf.data(sec)
        try:
            return raw.split(b"\0", 1)[0].decode()
        except UnicodeDecodeError as exc:
            raise ObjectError("section license: not a valid UTF-8 string") from exc

    def _version(self) -> int:
        sec = self.elf.by_name.get("version")
        if sec is None:
            return 0
        raw = self.elf.data(sec)
        if len(raw) != 4:
            raise ObjectError(f"section version: {len(raw)} bytes, expected a 4-byte kernel version")
        return int(struct.unpack("<I", raw)[0])

    # -- maps -----------------------------------------------------------------------------------
    def _maps(self, targets: DataTargets) -> dict[str, MapSpec]:
        maps: dict[str, MapSpec] = {}
        self._btf_map_defs: dict[str, tuple[int, int, int | None]] = {}  # name -> (offset, size, values)

        def add(name: str, spec: MapSpec | ObjectError, section: str) -> None:
            if name in maps or name in self.refused_maps:
                first = maps[name].section if name in maps else self.refused_maps[name].section
                raise ObjectError(f"map {name!r} is defined twice (sections {first} and {section})")
            if isinstance(spec, MapSpec):
                maps[name] = spec
            else:
                self.refused_maps[name] = RefusedMap(
                    name, section, str(spec), malformed=not isinstance(spec, UnsupportedError)
                )

        for sec in self.elf.sections:
            if sec.name in (BTF_MAPS_SECTION, LEGACY_MAPS_SECTION):
                with guard(f"section {sec.name}"):
                    found = self._btf_maps(sec) if sec.name == BTF_MAPS_SECTION else legacy_maps(self.elf, sec)
                    if sec.name == LEGACY_MAPS_SECTION and self.elf.has_relocations(sec):
                        found = self._legacy_relocated(sec, found)
                targets.map_sections.add(sec.index)
                for offset, name, spec in found:
                    add(name, spec, sec.name)
                    targets.maps[(sec.index, offset)] = name
            elif is_global_data(sec.name) and not sec.executable:
                with guard(f"section {sec.name}"):
                    data_spec = global_data_map(self.elf, sec)
                if data_spec is not None:
                    add(data_spec.name, data_spec, sec.name)
                    targets.data[sec.index] = (data_spec.name, data_spec.value_size)
        return maps

    def _with_btf(self, maps: dict[str, MapSpec], inputs: LinkInputs) -> dict[str, MapSpec]:
        """Every map with BTF type ids gets the object's BTF as the kernel takes it, which the loader
        creates it with (libbpf's bpf_object__create_map passes the object's btf_fd to each). Global
        data maps take their DATASEC as value type, with no key type (libbpf's
        map_fill_btf_type_info). A BTF that cannot be sanitized leaves the maps without it, as libbpf
        goes on when the kernel refuses the object's BTF ("BTF is optional, ignoring"), except the
        maps whose values need it (a timer, a spin lock...): those are refused, naming why."""
        if ".BTF" not in self.elf.by_name:
            return maps
        maps = {name: self._datasec_type(spec) for name, spec in maps.items()}
        if not any(_btf_ids(spec) for spec in maps.values()):
            return maps
        try:
            data = inputs.program_btf
        except ObjectError as exc:
            for name, spec in list(maps.items()):
                needs = spec.btf_fields or (spec.inner.btf_fields if spec.inner is not None else ())
                if needs:
                    del maps[name]
                    self.refused_maps[name] = RefusedMap(
                        name,
                        spec.section,
                        f"map {name!r}: its value holds {needs[0]}, which needs the object's BTF: {exc}",
                        malformed=not isinstance(exc, UnsupportedError),
                    )
            return maps
        return {name: _attach_btf(spec, data) for name, spec in maps.items()}

    def _datasec_type(self, spec: MapSpec) -> MapSpec:
        if spec.style is not DefinitionStyle.GLOBAL_DATA or spec.btf_value_type_id:
            return spec
        try:
            # libbpf's btf__find_by_name(obj->btf, map->real_name), through the name index
            found = self.btf.find(spec.section, Kind.DATASEC)
        except ObjectError:
            return spec  # a .BTF the maps cannot use: they are created without it
        return dataclasses.replace(spec, btf_value_type_id=found[0]) if found else spec

    def _legacy_relocated(self, sec: Section, found: list[LegacyMap]) -> list[LegacyMap]:
        """A relocation in a legacy ``maps`` section: neither struct bpf_map_def nor bpf_elf_map has
        a pointer field (libbpf skips such relocations), so the definitions it lands in are refused."""
        out: list[LegacyMap] = []
        offsets = sorted(rel.offset for rel in self.elf.relocations(sec))
        ends = [o for o, _, _ in found[1:]] + [sec.size]
        for (offset, name, spec), end in zip(found, ends, strict=True):
            hit = next((o for o in offsets if offset <= o < end), None)
            if hit is not None and isinstance(spec, MapSpec):
                spec = UnsupportedError(
                    f"unsupported: map {name!r} in section {sec.name}: relocation at offset {hit} "
                    "(a legacy map definition has no pointer fields to initialise)"
                )
            out.append((offset, name, spec))
        return out

    def _btf_maps(self, sec: Section) -> list[LegacyMap]:
        """BTF maps, placed by their symbols (the DATASEC's offsets are not filled in by clang)."""
        symbols = {
            s.name: s for s in self.elf.symbols if s.shndx == sec.index and s.type not in (STT_SECTION, STT_FILE)
        }
        found: list[LegacyMap] = []
        for entry in btf_maps(self.btf, sec.name):
            sym = symbols.get(entry.name)
            if sym is None:
                raise ObjectError(f"section {sec.name}: map {entry.name!r} has no symbol")
            # Nothing reads the definition's bytes (BTF describes it), but a symbol outside its
            # section means the section or the symbol table is corrupt.
            if sym.value + sym.size > sec.size:
                raise ObjectError(
                    f"section {sec.name}: map {entry.name!r} at offset {sym.value} ({sym.size} bytes) "
                    f"extends beyond the section ({sec.size} bytes)"
                )
            self._btf_map_defs[entry.name] = (sym.value, sym.size, entry.values_offset)
            spec: MapSpec | ObjectError = entry.spec if entry.spec is not None else _error(entry.error)
            found.append((sym.value, entry.name, spec))
        return sorted(found, key=lambda item: item[0])

    def _initial_slots(self, maps: dict[str, MapSpec], programs: dict[str, ProgramSpec]) -> dict[str, MapSpec]:
        """Initial slots from the ``.maps`` relocations, as libbpf's bpf_object__collect_map_relos."""
        sec = self.elf.by_name.get(BTF_MAPS_SECTION)
        if sec is None or not self.elf.has_relocations(sec):
            return maps
        with guard(f"section {sec.name} relocations"):
            found = collect_slots(self.elf, sec, self._btf_map_defs)
        maps = dict(maps)
        for name, slots in found.items():
            spec = maps.get(name)
            if spec is None:
                continue  # already refused for its definition
            checked = check_slots(
                spec, slots, maps, self.refused_maps, self._entry_points, self._btf_map_defs, sec.index
            )
            if isinstance(checked, ObjectError):
                del maps[name]
                self.refused_maps[name] = RefusedMap(
                    name, sec.name, str(checked), malformed=not isinstance(checked, UnsupportedError)
                )
            else:
                maps[name] = dataclasses.replace(spec, slots=checked)
        return maps

    # -- programs -------------------------------------------------------------------------------
    def _programs(
        self, linker: Linker, license: str, version: int, inputs: LinkInputs
    ) -> tuple[dict[str, ProgramSpec], tuple[str, ...]]:
        """Every program, linked; one that cannot be (an unsupported feature, a corrupt instruction
        or relocation of its own) is refused with the error's message, the others are kept."""
        programs: dict[str, ProgramSpec] = {}
        sections: dict[str, str] = {}  # every program, loadable or not, in order -> its section
        self._entry_points: dict[tuple[int, int], str] = {}  # (shndx, first insn) -> program
        text = self.elf.by_name.get(".text")
        if text is not None and text.executable:
            # The subprograms' table is shared by every program: if it cannot be read, the object cannot.
            with guard("section .text"):
                linker.functions(text)
                self.elf.relocations(text)
        for sec in self.elf.sections:
            if not sec.executable or sec.name == ".text":
                continue
            prog_type, attach_type = program_type(sec.name)
            with guard(f"section {sec.name}"):
                # The section's function and relocation tables: corrupt, no program of it can be named.
                functions: list[Function] = linker.functions(sec)
                self.elf.relocations(sec)
            for func in functions:
                if func.name in sections:
                    raise ObjectError(
                        f"program {func.name!r} is defined twice (sections {sections[func.name]} and {sec.name})"
                    )
                sections[func.name] = sec.name
                self._entry_points[(sec.index, func.start)] = func.name
                try:
                    _refuse_program_type(func, prog_type)
                    with guard(f"program {func.name!r} (section {sec.name})"):
                        linked = linker.link(func)
                        btf = inputs.program_btf if linked.callbacks else None
                except ObjectError as exc:
                    self.refused_programs[func.name] = RefusedProgram(
                        func.name,
                        sec.name,
                        prog_type,
                        attach_type,
                        str(exc),
                        malformed=not isinstance(exc, UnsupportedError),
                    )
                    continue
                programs[func.name] = ProgramSpec(
                    name=func.name,
                    section=sec.name,
                    type=prog_type,
                    expected_attach_type=attach_type,
                    instructions=linked.code,
                    license=license,
                    kernel_version=version,
                    relocations=linked.relocations,
                    externs=linked.externs,
                    func_info=linked.func_info,
                    line_info=linked.line_info,
                    btf=btf,
                    core_relocations=linked.core_relocations,
                    local_btf=self._btf_section if linked.core_relocations else None,
                )
        return programs, tuple(sections)


def _btf_ids(spec: MapSpec) -> bool:
    return bool(spec.btf_key_type_id or spec.btf_value_type_id) or (spec.inner is not None and _btf_ids(spec.inner))


def _attach_btf(spec: MapSpec, data: bytes) -> MapSpec:
    if not _btf_ids(spec):
        return spec
    inner = _attach_btf(spec.inner, data) if spec.inner is not None else None
    return dataclasses.replace(spec, btf=data, inner=inner)


def _refuse_program_type(func: Function, prog_type: ProgType) -> None:
    where = f"program {func.name!r} (section {func.section.name})"
    if prog_type is ProgType.Unspec:
        raise UnsupportedError(
            f"unsupported: {where}: the section name names no program type (libbpf's section names: "
            "tc, xdp, cgroup_skb/ingress, ...)"
        )
    if prog_type is ProgType.StructOps:
        raise UnsupportedError(
            f"unsupported: {where}: a struct_ops program is loaded through a struct_ops map, "
            "which bpfshare does not create"
        )


def _error(exc: ObjectError | None) -> ObjectError:
    assert exc is not None  # a BtfMap has a spec or an error
    return exc


__all__ = ["read_collection"]
