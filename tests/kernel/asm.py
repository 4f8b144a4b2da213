"""A tiny BPF assembler for tests: hand-built programs, independent of the ELF reader."""

from __future__ import annotations

import struct

from bpfshare.spec import MapRelocation, MapSpec, ProgramSpec
from bpfshare.types import AttachType, MapType, ProgType

# Opcodes used below (class | op | source).
MOV64_IMM = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
MOV64_REG = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X
ADD64_IMM = 0x07  # BPF_ALU64 | BPF_ADD | BPF_K
ST_MEM_W = 0x62  # BPF_ST | BPF_MEM | BPF_W
LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW
CALL = 0x85
JEQ_IMM = 0x15
ATOMIC_DW = 0xDB  # BPF_STX | BPF_ATOMIC | BPF_DW, imm BPF_ADD
EXIT = 0x95
HELPER_MAP_LOOKUP = 1
R10 = 10


def insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, dst | src << 4, off, imm)


def returns(value: int) -> bytes:
    """``r0 = value; exit``."""
    return insn(MOV64_IMM, 0, imm=value) + insn(EXIT)


def uninitialized_read() -> bytes:
    """``r0 = r2; exit``: r2 is never written, so the verifier refuses it (``R2 !read_ok``)."""
    return insn(MOV64_REG, 0, 2) + insn(EXIT)


COUNTER_RELOC_INSN = 3


def counter(ret: int) -> bytes:
    """``counter[0] += 1`` (atomically) then ``return ret``; the map is bound by relocation."""
    return b"".join(
        [
            insn(ST_MEM_W, R10, off=-4, imm=0),  # key = 0 on the stack
            insn(MOV64_REG, 2, R10),
            insn(ADD64_IMM, 2, imm=-4),  # r2 = &key
            insn(LD_IMM64, 1),
            insn(0),  # r1 = map (insn 3, patched with the fd)
            insn(CALL, imm=HELPER_MAP_LOOKUP),
            insn(JEQ_IMM, 0, off=2, imm=0),  # if !value skip the add
            insn(MOV64_IMM, 1, imm=1),
            insn(ATOMIC_DW, 0, 1, off=0, imm=0),  # lock *(u64 *)(r0 + 0) += r1
            insn(MOV64_IMM, 0, imm=ret),
            insn(EXIT),
        ]
    )


COUNTER_MAP = MapSpec(name="counter", type=MapType.Array, key_size=4, value_size=8, max_entries=1)


def counter_spec(
    prog_type: ProgType, attach: AttachType | None = None, ret: int = 0, name: str = "count"
) -> ProgramSpec:
    return ProgramSpec(
        name=name,
        section="test",
        type=prog_type,
        expected_attach_type=attach,
        instructions=counter(ret),
        relocations=(MapRelocation(COUNTER_RELOC_INSN, "counter"),),
    )


def simple_spec(
    prog_type: ProgType, instructions: bytes, attach: AttachType | None = None, name: str = "simple"
) -> ProgramSpec:
    return ProgramSpec(
        name=name, section="test", type=prog_type, expected_attach_type=attach, instructions=instructions
    )


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def u64(value: int) -> bytes:
    return struct.pack("=Q", value)


def read_u64(data: bytes | None) -> int:
    return 0 if data is None else struct.unpack("=Q", data[:8])[0]
