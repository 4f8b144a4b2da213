"""Specs: what an ELF object declares, as pure data (no kernel, no file handles).

Modelled on cilium/ebpf's MapSpec / ProgramSpec / CollectionSpec. The object reader
(``bpfshare.object``) produces a ``CollectionSpec``; the loader turns specs into live kernel
objects (``bpfshare.kernel``). Everything here is immutable and cheap to compare.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import struct
from dataclasses import dataclass, field

from bpfshare.types import MAP_IN_MAP_TYPES, AttachType, MapFlag, MapType, ProgType

INSN_SIZE = 8

# BPF_OBJ_NAME_LEN is 16 bytes including the NUL: a map or program name keeps 15 characters.
OBJECT_NAME_MAX = 15
_NOT_IN_OBJECT_NAME = re.compile(r"[^A-Za-z0-9_.]")


def kernel_object_name(name: str) -> str:
    """The name the kernel will keep for a map or program called ``name``.

    At most ``OBJECT_NAME_MAX`` characters of [A-Za-z0-9_.]: the kernel refuses any other character
    (EINVAL, bpf_obj_name_cpy) rather than dropping it, so each one becomes '_'. Pure, so that the
    engine can predict the name a map will show without asking the kernel.
    """
    return _NOT_IN_OBJECT_NAME.sub("_", name)[:OBJECT_NAME_MAX]


class Pinning(enum.IntEnum):
    """How a map asks to be pinned. Values follow iproute2's ``bpf_elf_map.pinning``.

    libbpf's ``LIBBPF_PIN_BY_NAME`` (1) is stored as ``ByName``; iproute2's PIN_OBJECT_NS (1) and
    PIN_GLOBAL_NS (2) are told apart by the definition style.
    """

    NONE = 0
    ObjectNS = 1  # iproute2: /sys/fs/bpf/tc/<object hash>/<name>
    GlobalNS = 2  # iproute2: /sys/fs/bpf/tc/globals/<name>
    ByName = 3  # libbpf: <pin root>/<name>


class DefinitionStyle(enum.StrEnum):
    BTF = "btf"  # SEC(".maps") with BTF
    LIBBPF_LEGACY = "libbpf-legacy"  # SEC("maps") struct bpf_map_def
    IPROUTE2_LEGACY = "iproute2-legacy"  # SEC("maps") struct bpf_elf_map
    GLOBAL_DATA = "global-data"  # .data / .rodata / .bss


@dataclass(frozen=True)
class MapSpec:
    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: MapFlag = MapFlag(0)  # noqa: RUF009  (an immutable IntFlag value)
    pinning: Pinning = Pinning.NONE
    style: DefinitionStyle = DefinitionStyle.BTF
    section: str = ""
    # Map-in-map: the inner map's spec (BTF __array(values, ...) or bpf_elf_map.inner_idx).
    inner: MapSpec | None = None
    # Initial contents of a global data map (.data/.rodata): value of key 0.
    contents: bytes | None = None
    # iproute2's bpf_elf_map.id / inner_id / inner_idx, kept so inspect can show them.
    extra: tuple[tuple[str, int], ...] = ()

    def describe(self) -> dict[str, object]:
        """The JSON shape of ``bpfshare inspect``'s maps."""
        return {
            "name": self.name,
            "type": self.type.name,
            "keySize": self.key_size,
            "valueSize": self.value_size,
            "maxEntries": self.max_entries,
            "flags": MapFlag.names(int(self.flags)),
            "pinning": self.pinning.name if self.pinning else "none",
            "style": str(self.style),
        }


def effective_spec(spec: MapSpec, possible_cpus: int) -> MapSpec:
    """The spec as the kernel will create it: its "magic" fields filled in, as the kernel (and libbpf,
    and cilium/ebpf) do, on a machine with ``possible_cpus`` possible CPUs.

    - PerfEventArray: key and value size 0 mean 4; max_entries 0 (or more than the CPUs) means the
      number of possible CPUs. CpuMap: max_entries clamped to the possible CPUs likewise.
    - ArrayOfMaps / HashOfMaps: value size 0 means 4 (the value is a map fd, read back as an id).
    - RingBuf / UserRingBuf: key and value size are always 0 (the kernel refuses anything else).

    Returns ``spec`` itself when nothing changes.
    """
    changes: dict[str, int] = {}
    if spec.type is MapType.PerfEventArray:
        changes = {"key_size": spec.key_size or 4, "value_size": spec.value_size or 4}
        if spec.max_entries == 0 or spec.max_entries > possible_cpus:
            changes["max_entries"] = possible_cpus
    elif spec.type is MapType.CpuMap:
        if spec.max_entries == 0 or spec.max_entries > possible_cpus:
            changes["max_entries"] = possible_cpus
    elif spec.type in MAP_IN_MAP_TYPES:
        changes = {"value_size": spec.value_size or 4}
    elif spec.type in (MapType.RingBuf, MapType.UserRingBuf):
        changes = {"key_size": 0, "value_size": 0}
    changes = {name: value for name, value in changes.items() if getattr(spec, name) != value}
    return dataclasses.replace(spec, **changes) if changes else spec  # type: ignore[arg-type]


class RelocationKind(enum.IntEnum):
    """The pseudo source register an ld_imm64 of a map gets (BPF_PSEUDO_MAP_*)."""

    MAP_FD = 1  # BPF_PSEUDO_MAP_FD, ld_imm64 of a map: imm := map fd
    MAP_VALUE = 2  # BPF_PSEUDO_MAP_VALUE, into a global data map: imm := fd, next imm := offset


@dataclass(frozen=True)
class MapRelocation:
    """An ``ld_imm64`` at instruction ``insn`` (index in the linked program) that refers to a map."""

    insn: int
    map_name: str
    kind: RelocationKind = RelocationKind.MAP_FD
    offset: int = 0  # for MAP_VALUE: byte offset into the map value


@dataclass(frozen=True)
class ProgramSpec:
    name: str  # function symbol
    section: str
    type: ProgType
    expected_attach_type: AttachType | None
    instructions: bytes  # linked: the program followed by every .text subprogram it calls
    license: str = "GPL"
    kernel_version: int = 0
    relocations: tuple[MapRelocation, ...] = ()

    @property
    def map_names(self) -> list[str]:
        """Object maps the program refers to, in first-use order."""
        seen: dict[str, None] = {}
        for rel in self.relocations:
            seen.setdefault(rel.map_name, None)
        return list(seen)

    def instructions_with_fds(self, fds: dict[str, int]) -> bytes:
        """Return the instructions with every map reference bound to a file descriptor.

        Pure: the loader passes the fds of the maps it created or reused.
        """
        buf = bytearray(self.instructions)
        for rel in self.relocations:
            off = rel.insn * INSN_SIZE
            fd = fds[rel.map_name]
            regs = buf[off + 1]
            buf[off + 1] = (regs & 0x0F) | (int(rel.kind) << 4)  # src_reg := pseudo kind
            struct.pack_into("<i", buf, off + 4, fd)
            if rel.kind is RelocationKind.MAP_VALUE:
                struct.pack_into("<i", buf, off + INSN_SIZE + 4, rel.offset)
        return bytes(buf)

    def describe(self) -> dict[str, object]:
        """The JSON shape of ``bpfshare inspect``'s programs."""
        return {
            "name": self.name,
            "section": self.section,
            "type": self.type.name,
            "attachType": self.expected_attach_type.name if self.expected_attach_type is not None else None,
            "instructions": len(self.instructions) // INSN_SIZE,
            "maps": self.map_names,
        }


@dataclass(frozen=True)
class CollectionSpec:
    maps: dict[str, MapSpec] = field(default_factory=dict)
    programs: dict[str, ProgramSpec] = field(default_factory=dict)
    license: str = ""
    kernel_version: int = 0

    def program(self, name: str) -> ProgramSpec:
        """Find a program by function name, or by section name when that is unique."""
        if name in self.programs:
            return self.programs[name]
        by_section = [p for p in self.programs.values() if p.section == name]
        if len(by_section) == 1:
            return by_section[0]
        known = ", ".join(sorted(self.programs)) or "none"
        if by_section:
            names = ", ".join(p.name for p in by_section)
            raise KeyError(f"section {name!r} holds several programs ({names}); name one")
        raise KeyError(f"no program {name!r} in the object (programs: {known})")

    def describe(self) -> dict[str, object]:
        return {
            "license": self.license,
            "programs": [p.describe() for p in self.programs.values()],
            "maps": [m.describe() for m in self.maps.values()],
        }
