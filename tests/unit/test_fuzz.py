"""Property: for any truncation or mutation of a real object, ``read_collection`` returns a consistent
``CollectionSpec`` or raises an ``ObjectError`` from an explicit check that says where the fault is
(``tests.unit.untrusted``). Any other exception fails the test: it is a bug in a parser.

Random mutations (hypothesis) aim at the structures the reader decodes: the ELF header, the section
header table, the symbol table, relocations, program code, map definitions, ``.BTF`` and
``.BTF.ext``. The default run is short; set BPFSHARE_FUZZ_EXAMPLES (e.g. 20000) for a longer one.
A deterministic sweep sets every field of those structures, one at a time, to 0xffffffff: what
random mutations rarely reach (one type id out of range among hundreds of BTF words), it always does.
"""

from __future__ import annotations

import os
import struct
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfshare.object import read_collection
from bpfshare.object.elf import SHT_NOBITS, SHT_REL, SHT_SYMTAB, ElfObject, Section
from tests.fixtures.objects import BpfObjects
from tests.unit.untrusted import check_consistent, read_untrusted

EXAMPLES = int(os.environ.get("BPFSHARE_FUZZ_EXAMPLES", "200"))
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 20, 24, 36, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@cache
def target(path: Path) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """An object's bytes and the (start, end) byte ranges worth mutating."""
    data = path.read_bytes()
    elf = ElfObject(data)
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    regions = [(0, 64), (shoff, shoff + len(elf.sections) * 64)]
    for sec in elf.sections[1:]:
        if sec.type != SHT_NOBITS and sec.size and not sec.name.startswith((".debug", ".rel.debug")):
            regions.append((sec.offset, sec.offset + sec.size))
    return data, tuple(regions)


class Mutated:
    """Mutated object bytes, shown in hypothesis' reports by what was done to which object."""

    def __init__(self, name: str, data: bytes, steps: list[str]) -> None:
        self.data = data
        self.description = f"{name}: {'; '.join(steps) or 'unchanged'}"

    def __repr__(self) -> str:
        return self.description


@st.composite
def mutations(draw: st.DrawFn, paths: list[Path]) -> Mutated:
    path = draw(st.sampled_from(paths))
    data, regions = target(path)
    buf = bytearray(data)
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        start, end = draw(st.sampled_from(regions))
        end = min(end, len(buf))
        if start >= end:
            continue
        pos = draw(st.integers(start, end - 1))
        kind = draw(st.sampled_from(["flip", "bytes", "u32", "u64", "truncate"]))
        if kind == "flip":
            bit = draw(st.integers(0, 7))
            buf[pos] ^= 1 << bit
            steps.append(f"flip bit {bit} at {pos:#x}")
        elif kind == "bytes":
            chunk = draw(st.binary(min_size=1, max_size=16))
            buf[pos : pos + len(chunk)] = chunk
            steps.append(f"write {chunk.hex()} at {pos:#x}")
        elif kind in ("u32", "u64"):
            size = 4 if kind == "u32" else 8
            pos -= pos % size
            if pos + size <= len(buf):
                value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**32 - 1) | st.just(len(data)))
                struct.pack_into("<I" if size == 4 else "<Q", buf, pos, value)
                steps.append(f"{kind} {value:#x} at {pos:#x}")
        else:
            del buf[pos:]
            steps.append(f"truncate at {pos:#x}")
    return Mutated(path.name, bytes(buf), steps)


def test_mutated_objects(bpf_objects: BpfObjects) -> None:
    paths = bpf_objects.paths()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(mutations(paths))
    def run(mutated: Mutated) -> None:
        read_untrusted(mutated.data)

    run()


def test_unmutated_objects_are_consistent(bpf_objects: BpfObjects) -> None:
    for path in bpf_objects.paths():
        check_consistent(read_collection(path))


def swept_words(data: bytes, parts: set[str]) -> list[int]:
    """Offsets of every aligned 32-bit word of the structures the reader decodes field by field, of
    the given ``parts``: "header" (ELF), "symbols", "code" (with its relocations), "maps" (legacy
    definitions and .maps), "btf" (.BTF's header and types, .BTF.ext's header). Strings, section
    headers and data are left to the random mutations."""
    elf = ElfObject(data)

    def part(sec: Section) -> str:
        target = elf.sections[sec.info] if sec.type == SHT_REL and sec.info < len(elf.sections) else sec
        if target.executable:
            return "code"
        if target.name in ("maps", ".maps"):
            return "maps"
        if sec.type == SHT_SYMTAB:
            return "symbols"
        return "btf" if sec.name in (".BTF", ".BTF.ext") else ""

    ranges = [(0, 64)] if "header" in parts else []
    for sec in elf.sections[1:]:
        if part(sec) not in parts:
            continue
        end = sec.offset + sec.size
        if sec.name == ".BTF":
            hdr_len, type_off, type_len = struct.unpack_from("<III", data, sec.offset + 4)
            end = sec.offset + hdr_len + type_off + type_len
        elif sec.name == ".BTF.ext":
            end = sec.offset + 32
        ranges.append((sec.offset, end))
    return [offset for start, end in ranges for offset in range(start, end - 3, 4)]


@pytest.mark.parametrize(
    ("example", "parts"),
    [
        ("flow_counter", {"header", "symbols", "code", "maps", "btf"}),  # BTF maps, five programs
        ("features", {"code", "symbols"}),  # subprograms, global data, callbacks refused
        ("flow_counter_legacy", {"code", "maps"}),  # struct bpf_elf_map
        ("tail_calls", {"symbols", "maps"}),  # .maps relocations: prog array slots
        ("map_in_map", {"symbols", "maps"}),  # .maps relocations: map-in-map slots
    ],
    ids=["flow_counter", "features", "flow_counter_legacy", "tail_calls", "map_in_map"],
)
def test_every_word_set_to_all_ones(bpf_objects: BpfObjects, example: str, parts: set[str]) -> None:
    """0xffffffff in any one field: every index, offset, size and count out of range, one at a time."""
    data = bpf_objects[example].read_bytes()
    for offset in swept_words(data, parts):
        read_untrusted(data[:offset] + b"\xff\xff\xff\xff" + data[offset + 4 :])
