"""ELF object -> ``CollectionSpec``: programs, maps of every definition style, license, version."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object.btf import Btf
from bpfshare.object.btf_ext import CoreRelocation, core_relocations
from bpfshare.object.btf_maps import btf_maps
from bpfshare.object.elf import STT_FILE, STT_SECTION, ElfObject, Section
from bpfshare.object.global_data import global_data_map, is_global_data
from bpfshare.object.guard import guard
from bpfshare.object.legacy import legacy_maps
from bpfshare.object.linker import DataTargets, Function, Linker
from bpfshare.object.sections import program_type
from bpfshare.spec import CollectionSpec, MapSpec, ProgramSpec

BTF_MAPS_SECTION = ".maps"
LEGACY_MAPS_SECTION = "maps"
UNSUPPORTED_SECTIONS = {
    ".struct_ops": "struct_ops maps",
    ".struct_ops.link": "struct_ops maps",
    ".ksyms": "extern kernel symbols (__ksym)",
    ".kconfig": "extern Kconfig values (__kconfig)",
    ".addr_space.1": "BPF arena variables",
}

Source = str | os.PathLike[str] | bytes | bytearray | memoryview


def read_collection(source: Source) -> CollectionSpec:
    """Parse a relocatable eBPF ELF object (a path, or its bytes) into a ``CollectionSpec``.

    Raises ``ObjectError`` for anything malformed (naming the section, symbol or offset) and its
    subclass ``UnsupportedError`` for valid objects that use something bpfshare cannot load (CO-RE,
    kfuncs, externs, ...). No other exception escapes for any input bytes.
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
                self._btf = Btf(self.elf.data(sec))
        return self._btf

    def collection(self) -> CollectionSpec:
        self._refuse_unsupported()
        license = self._license()
        version = self._version()
        targets = DataTargets()
        maps = self._maps(targets)
        linker = Linker(self.elf, targets)
        linker.core_records = self._core_records()
        programs = self._programs(linker, license, version)
        return CollectionSpec(maps=maps, programs=programs, license=license, kernel_version=version)

    # -- object-wide checks ---------------------------------------------------------------------
    def _refuse_unsupported(self) -> None:
        """Sections bpfshare cannot load. (Externs and kfuncs are refused where a program uses them.)"""
        for name, what in UNSUPPORTED_SECTIONS.items():
            if name in self.elf.by_name:
                raise UnsupportedError(f"unsupported: {what} (section {name})")

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

        def add(spec: MapSpec) -> None:
            if spec.name in maps:
                raise ObjectError(
                    f"map {spec.name!r} is defined twice (sections {maps[spec.name].section} and {spec.section})"
                )
            maps[spec.name] = spec

        for sec in self.elf.sections:
            if sec.name in (BTF_MAPS_SECTION, LEGACY_MAPS_SECTION):
                with guard(f"section {sec.name}"):
                    if self.elf.has_relocations(sec):
                        raise UnsupportedError(
                            f"unsupported: initial values of maps (relocations against "
                            f"section {sec.name}: prog array or map-in-map slots)"
                        )
                    found = self._btf_maps(sec) if sec.name == BTF_MAPS_SECTION else legacy_maps(self.elf, sec)
                targets.map_sections.add(sec.index)
                for offset, spec in found:
                    add(spec)
                    targets.maps[(sec.index, offset)] = spec.name
            elif is_global_data(sec.name) and not sec.executable:
                with guard(f"section {sec.name}"):
                    data_spec = global_data_map(self.elf, sec)
                if data_spec is not None:
                    add(data_spec)
                    targets.data[sec.index] = (data_spec.name, data_spec.value_size)
        return maps

    def _btf_maps(self, sec: Section) -> list[tuple[int, MapSpec]]:
        """BTF maps, placed by their symbols (the DATASEC's offsets are not filled in by clang)."""
        symbols = {
            s.name: s for s in self.elf.symbols if s.shndx == sec.index and s.type not in (STT_SECTION, STT_FILE)
        }
        found = []
        for spec in btf_maps(self.btf, sec.name):
            sym = symbols.get(spec.name)
            if sym is None:
                raise ObjectError(f"section {sec.name}: map {spec.name!r} has no symbol")
            # Nothing reads the definition's bytes (BTF describes it), but a symbol outside its
            # section means the section or the symbol table is corrupt.
            if sym.value + sym.size > sec.size:
                raise ObjectError(
                    f"section {sec.name}: map {spec.name!r} at offset {sym.value} ({sym.size} bytes) "
                    f"extends beyond the section ({sec.size} bytes)"
                )
            found.append((sym.value, spec))
        return sorted(found, key=lambda item: item[0])

    # -- programs -------------------------------------------------------------------------------
    def _programs(self, linker: Linker, license: str, version: int) -> dict[str, ProgramSpec]:
        programs: dict[str, ProgramSpec] = {}
        for sec in self.elf.sections:
            if not sec.executable or sec.name == ".text":
                continue
            prog_type, attach_type = program_type(sec.name)
            with guard(f"section {sec.name}"):
                functions: list[Function] = linker.functions(sec)
            for func in functions:
                if func.name in programs:
                    raise ObjectError(
                        f"program {func.name!r} is defined twice (sections "
                        f"{programs[func.name].section} and {sec.name})"
                    )
                with guard(f"program {func.name!r} (section {sec.name})"):
                    code, relocations = linker.link(func)
                    core = linker.core_relocations(func)
                programs[func.name] = ProgramSpec(
                    name=func.name,
                    section=sec.name,
                    type=prog_type,
                    expected_attach_type=attach_type,
                    instructions=code,
                    license=license,
                    kernel_version=version,
                    relocations=relocations,
                    core_relocations=core,
                    local_btf=self.btf if core else None,
                )
        return programs


__all__ = ["read_collection"]
