"""Initial slots of prog arrays and map-in-maps: the relocations of the ``.maps`` section.

    struct { __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(max_entries, 4); __type(key, __u32);
             __array(values, int (void *)); } jumps SEC(".maps") = { .values = { [1] = (void *)&stage } };

clang emits the ``values`` array as 8-byte slots of the definition, each one relocated against the
program (or, for a map-in-map, the map) it names. Mirrors libbpf's bpf_object__collect_map_relos:
the relocation must land in a map definition whose last member is ``values``, at a multiple of 8
bytes (a BPF pointer) past that member; a prog array's target must be an entry-point program (not a
``.text`` subprogram), a map-in-map's a map of ``.maps``; a HashOfMaps needs 4-byte keys (the slot
index is its key). Pure data: the spec records ``slot -> name``; the loader fills the slots.
"""

from __future__ import annotations

import struct

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object.elf import STT_SECTION, ElfObject, Section, Symbol
from bpfshare.spec import MapSpec, RefusedMap
from bpfshare.types import MAP_IN_MAP_TYPES, MapType

BPF_PTR_SIZE = 8  # a BPF pointer is 64 bits whatever the host
# (offset in the definition, target symbol, target offset in its section)
SlotRelocation = tuple[int, Symbol, int]
MapDefs = dict[str, tuple[int, int, int | None]]  # name -> (offset in .maps, size, values member offset)


def collect_slots(elf: ElfObject, sec: Section, defs: MapDefs) -> dict[str, list[SlotRelocation]]:
    """The relocations of ``sec`` grouped by the map definition each lands in.

    A relocation in no definition is corruption of the section as a whole (libbpf: "cannot find
    map at rel->r_offset"): an ``ObjectError``."""
    data = elf.data(sec)
    out: dict[str, list[SlotRelocation]] = {}
    for rel in elf.relocations(sec):
        if rel.type == 0:  # R_BPF_NONE
            continue
        owner = next(
            (
                name
                for name, (off, size, _) in defs.items()
                if off <= rel.offset and rel.offset + BPF_PTR_SIZE <= off + size
            ),
            None,
        )
        if owner is None:
            raise ObjectError(
                f"section {sec.name}: relocation at offset {rel.offset} against {rel.symbol.describe()} "
                "lies in no map definition"
            )
        target = rel.symbol.value
        if rel.symbol.type == STT_SECTION and rel.offset + BPF_PTR_SIZE <= len(data):
            target += struct.unpack_from("<q", data, rel.offset)[0]  # REL: the addend sits in the slot
        out.setdefault(owner, []).append((rel.offset - defs[owner][0], rel.symbol, target))
    return out


def check_slots(
    spec: MapSpec,
    relocations: list[SlotRelocation],
    maps: dict[str, MapSpec],
    refused_maps: dict[str, RefusedMap],
    entry_points: dict[tuple[int, int], str],
    defs: MapDefs,
    maps_section: int,
) -> tuple[tuple[int, str], ...] | ObjectError:
    """``((slot, target name), ...)`` by slot, or the error that refuses this map."""
    where = f"map {spec.name!r}"
    values_offset = defs[spec.name][2]
    if spec.type is not MapType.ProgArray and spec.type not in MAP_IN_MAP_TYPES:
        return UnsupportedError(
            f"unsupported: {where}: initial values of a {spec.type.name} map "
            "(only prog arrays and map-in-maps have slots)"
        )
    if values_offset is None:
        return ObjectError(f"{where}: relocated, but its definition has no trailing 'values' member (__array)")
    if spec.type is MapType.HashOfMaps and spec.key_size != 4:
        return ObjectError(
            f"{where}: a HashOfMaps with initial slots needs 4-byte keys (the slot index), not {spec.key_size}"
        )
    slots: dict[int, str] = {}
    by_offset = {off: name for name, (off, _, _) in defs.items()}
    for offset, sym, target in relocations:
        moff = offset - values_offset
        if moff < 0 or moff % BPF_PTR_SIZE:
            return ObjectError(f"{where}: relocation at offset {offset} of its definition is not a 'values' slot")
        slot = moff // BPF_PTR_SIZE
        if slot >= spec.max_entries:
            return ObjectError(f"{where}: initial slot {slot} is beyond its max_entries {spec.max_entries}")
        if spec.type is MapType.ProgArray:
            name = entry_points.get((sym.shndx, target // 8)) if target % 8 == 0 else None
            if name is None:
                return ObjectError(f"{where}: slot {slot} names {sym.describe()}, which is not an entry-point program")
        else:
            name = by_offset.get(target) if sym.shndx == maps_section else None
            if name is None or (name not in maps and name not in refused_maps):
                return ObjectError(f"{where}: slot {slot} names {sym.describe()}, which is not a map of section .maps")
            if name == spec.name:
                return ObjectError(f"{where}: slot {slot} names the map itself")
        slots[slot] = name
    return tuple(sorted(slots.items()))
