"""Legacy map definitions: structs in the ``maps`` section, one per symbol.

Two layouts, told apart by the size of one definition (the symbol's size, or the section size divided
by the number of map symbols, as libbpf did):

* 20 bytes, libbpf's ``struct bpf_map_def`` {type, key_size, value_size, max_entries, map_flags}
  (larger definitions whose extra bytes are zero are accepted, like libbpf did);
* 36 bytes, iproute2's ``struct bpf_elf_map`` {type, size_key, size_value, max_elem, flags, id,
  pinning, inner_id, inner_idx}; pinning 1 = PIN_OBJECT_NS, 2 = PIN_GLOBAL_NS, any other non-zero
  value a custom pinning (a subdirectory named in the node's bpf_pinning file). A map-in-map's
  ``inner_id`` names the ``id`` of the map that serves as its inner map template.
"""

from __future__ import annotations

import dataclasses
import struct

from bpfshare.errors import ObjectError
from bpfshare.object.elf import STT_FILE, STT_SECTION, ElfObject, Section
from bpfshare.object.mapdef import map_type
from bpfshare.spec import DefinitionStyle, MapSpec, Pinning
from bpfshare.types import MAP_IN_MAP_TYPES, MapFlag

BPF_MAP_DEF = struct.Struct("<5I")
BPF_ELF_MAP = struct.Struct("<9I")
_PINNING = {0: Pinning.NONE, 1: Pinning.ObjectNS, 2: Pinning.GlobalNS}


LegacyMap = tuple[int, str, MapSpec | ObjectError]


def legacy_maps(elf: ElfObject, section: Section) -> list[LegacyMap]:
    """``(offset in the section, name, spec)`` for every map defined in the legacy ``section``.

    A definition that cannot be taken (an unknown type, a size neither layout has, a dangling
    inner_id) gives its error in place of the spec: it refuses that map and what uses it, not the
    object. A section that cannot be split into definitions is malformed as a whole.
    """
    data = elf.data(section)
    symbols = sorted(
        (s for s in elf.symbols if s.shndx == section.index and s.type not in (STT_SECTION, STT_FILE)),
        key=lambda s: s.value,
    )
    if not symbols:
        if data:
            raise ObjectError(f"section {section.name}: {len(data)} bytes of map definitions but no map symbols")
        return []
    if len(data) % len(symbols):
        raise ObjectError(
            f"section {section.name}: cannot split {len(data)} bytes into {len(symbols)} map definitions of equal size"
        )
    default_size = len(data) // len(symbols)
    out: list[LegacyMap] = []
    for sym in symbols:
        size = sym.size or default_size
        if sym.value + size > len(data):
            raise ObjectError(
                f"section {section.name}: map {sym.name!r} at offset {sym.value} "
                f"({size} bytes) extends beyond the section ({len(data)} bytes)"
            )
        raw = data[sym.value : sym.value + size]
        parsed: MapSpec | ObjectError
        try:
            parsed = _parse(sym.name, raw, section.name)
        except ObjectError as exc:
            parsed = exc
        out.append((sym.value, sym.name, parsed))
    return _link_inner_maps(out, section.name)


def _parse(name: str, raw: bytes, section: str) -> MapSpec:
    where = f"map {name!r} in section {section}"
    size = len(raw)
    if size == BPF_ELF_MAP.size:
        return _bpf_elf_map(name, raw, section, where)
    if size >= BPF_MAP_DEF.size and not any(raw[BPF_MAP_DEF.size :]):
        mtype, key_size, value_size, max_entries, flags = BPF_MAP_DEF.unpack_from(raw)
        return MapSpec(
            name=name,
            type=map_type(mtype, where),
            key_size=key_size,
            value_size=value_size,
            max_entries=max_entries,
            flags=MapFlag(flags),
            style=DefinitionStyle.LIBBPF_LEGACY,
            section=section,
        )
    raise ObjectError(
        f"{where}: definition of {size} bytes is neither a struct bpf_map_def ({BPF_MAP_DEF.size} bytes, or "
        f"more with trailing zeroes) nor an iproute2 struct bpf_elf_map ({BPF_ELF_MAP.size} bytes)"
    )


def _bpf_elf_map(name: str, raw: bytes, section: str, where: str) -> MapSpec:
    fields = BPF_ELF_MAP.unpack(raw)
    mtype, size_key, size_value, max_elem, flags, map_id, pinning, inner_id, inner_idx = fields
    return MapSpec(
        name=name,
        type=map_type(mtype, where),
        key_size=size_key,
        value_size=size_value,
        max_entries=max_elem,
        flags=MapFlag(flags),
        # Any other value is a custom pinning: a subdirectory the node's bpf_pinning file names
        # (iproute2's bpf_custom_pinning), resolved at load time by bpfshare.load.bpf_pinning.
        pinning=_PINNING.get(pinning, Pinning.Custom),
        custom_pinning=0 if pinning in _PINNING else pinning,
        style=DefinitionStyle.IPROUTE2_LEGACY,
        section=section,
        extra=(("id", map_id), ("inner_id", inner_id), ("inner_idx", inner_idx)),
    )


NO_INNER_IDX = 0xFFFFFFFF  # iproute2: inner_idx -1, "do not put this map in its outer map"


def _link_inner_maps(maps: list[LegacyMap], section: str) -> list[LegacyMap]:
    """Give each iproute2 map-in-map the spec of the map whose ``id`` its ``inner_id`` names, and
    its initial slots: as iproute2's bpf_maps_attach_all, every map with an ``id``, no ``inner_id``
    and an ``inner_idx`` other than -1 is put at that index of each map-in-map whose ``inner_id``
    names its id (so the template itself is slot 0 unless its inner_idx says otherwise)."""
    specs = [m for _, _, m in maps if isinstance(m, MapSpec)]
    by_id = {
        dict(m.extra)["id"]: m for m in specs if m.style is DefinitionStyle.IPROUTE2_LEGACY and dict(m.extra)["id"]
    }
    out: list[LegacyMap] = []
    for offset, name, spec in maps:
        if isinstance(spec, MapSpec):
            inner_id = dict(spec.extra).get("inner_id", 0)
            if spec.type in MAP_IN_MAP_TYPES and inner_id:
                inner = by_id.get(inner_id)
                if inner is None or inner is spec:
                    spec = ObjectError(
                        f"section {section}: map-in-map {spec.name!r} names inner_id {inner_id}, "
                        "but no other map has that id"
                    )
                else:
                    spec = _with_slots(dataclasses.replace(spec, inner=inner), specs, section)
        out.append((offset, name, spec))
    return out


def _with_slots(outer: MapSpec, specs: list[MapSpec], section: str) -> MapSpec | ObjectError:
    inner_id = dict(outer.extra)["inner_id"]
    slots: dict[int, str] = {}
    for m in specs:
        extra = dict(m.extra)
        if m.style is not DefinitionStyle.IPROUTE2_LEGACY or extra["id"] != inner_id or extra["inner_id"]:
            continue
        index = extra["inner_idx"]
        if index == NO_INNER_IDX:
            continue
        if index >= outer.max_entries:
            return ObjectError(
                f"section {section}: map-in-map {outer.name!r}: map {m.name!r} asks for slot {index} (inner_idx), "
                f"beyond its max_elem {outer.max_entries}"
            )
        slots[index] = m.name
    return dataclasses.replace(outer, slots=tuple(sorted(slots.items())))
