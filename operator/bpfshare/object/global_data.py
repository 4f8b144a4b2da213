"""Global variables: ``.data``, ``.rodata``, ``.bss`` (and ``.data.*``, ``.rodata.*``, ``.bss.*``).

Each section becomes a single-element Array map named after the section, whose value is the
section's bytes (zeros for ``.bss``). Read-only sections get BPF_F_RDONLY_PROG, so the verifier
knows their contents are constant (libbpf also freezes them after writing the contents: a loader
concern). Programs reach the variables with ``ld_imm64`` relocations: MAP_VALUE at an offset.
"""

from __future__ import annotations

from bpfshare.errors import ObjectError
from bpfshare.object.elf import SHT_NOBITS, SHT_PROGBITS, ElfObject, Section
from bpfshare.spec import DefinitionStyle, MapSpec
from bpfshare.types import MapFlag, MapType

_KINDS = (".data", ".rodata", ".bss")


def is_global_data(name: str) -> bool:
    return any(name == kind or name.startswith(kind + ".") for kind in _KINDS)


def global_data_map(elf: ElfObject, section: Section) -> MapSpec | None:
    """The map holding ``section``'s variables; None for an empty section."""
    if section.type not in (SHT_PROGBITS, SHT_NOBITS):
        raise ObjectError(f"section {section.name}: global data section of unexpected type {section.type}")
    if section.size == 0:
        return None
    readonly = section.name == ".rodata" or section.name.startswith(".rodata.")
    return MapSpec(
        name=section.name,
        type=MapType.Array,
        key_size=4,
        value_size=section.size,
        max_entries=1,
        flags=MapFlag.RdonlyProg if readonly else MapFlag(0),
        style=DefinitionStyle.GLOBAL_DATA,
        section=section.name,
        contents=elf.data(section),
    )
