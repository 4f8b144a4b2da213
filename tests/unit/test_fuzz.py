"""Property: for any truncation or mutation of a real object, ``read_collection`` returns a consistent
``CollectionSpec`` or raises ``ObjectError`` — never another exception.

Mutations aim at the structures the reader decodes: the ELF header, the section header table, the
symbol table, relocations, program code, map definitions, ``.BTF`` and ``.BTF.ext``. The default run
is short; set BPFSHARE_FUZZ_EXAMPLES (e.g. 20000) for a longer one.
"""

from __future__ import annotations

import json
import os
import struct
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfshare.errors import ObjectError
from bpfshare.object import read_collection
from bpfshare.object.elf import SHT_NOBITS, ElfObject
from bpfshare.spec import CollectionSpec
from tests.fixtures.objects import BpfObjects
from tests.unit.bpfasm import CALL, LD_IMM64, decode

EXAMPLES = int(os.environ.get("BPFSHARE_FUZZ_EXAMPLES", "300"))
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


def check_consistent(spec: CollectionSpec) -> None:
    """What the loader relies on: relocations on ld_imm64s of known maps, calls inside the program."""
    for prog in spec.programs.values():
        code = prog.instructions
        assert len(code) % 8 == 0 and code
        insns = decode(code)
        for rel in prog.relocations:
            assert 0 <= rel.insn < len(insns) - 1
            assert insns[rel.insn].op == LD_IMM64
            assert rel.map_name in spec.maps
        for i, ins in enumerate(insns):
            if ins.op == CALL and ins.src == 1:
                assert 0 <= i + ins.imm + 1 < len(insns)
        prog.instructions_with_fds({name: 3 for name in prog.map_names})
    json.dumps(spec.describe())


def test_mutated_objects(bpf_objects: BpfObjects) -> None:
    paths = bpf_objects.paths()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(mutations(paths))
    def run(mutated: Mutated) -> None:
        try:
            spec = read_collection(mutated.data)
        except ObjectError:
            return
        check_consistent(spec)

    run()


def test_unmutated_objects_are_consistent(bpf_objects: BpfObjects) -> None:
    for path in bpf_objects.paths():
        check_consistent(read_collection(path))
