"""eBPF instruction encoding: the few opcodes and pseudo source registers the reader needs."""

from __future__ import annotations

import struct

INSN_SIZE = 8
LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: a 16-byte instruction
CALL = 0x85  # BPF_JMP | BPF_CALL

# src_reg of a call (an ld_imm64's pseudo source registers are spec.RelocationKind)
PSEUDO_CALL = 1  # bpf-to-bpf call: imm = relative instruction offset
PSEUDO_KFUNC_CALL = 2

IMM = struct.Struct("<i")


def src_reg(code: bytes | bytearray, index: int) -> int:
    return code[index * INSN_SIZE + 1] >> 4


def imm(code: bytes | bytearray, index: int) -> int:
    return int(IMM.unpack_from(code, index * INSN_SIZE + 4)[0])


def set_imm(code: bytearray, index: int, value: int) -> None:
    IMM.pack_into(code, index * INSN_SIZE + 4, value)


def opcode_indexes(code: bytes | bytearray, opcode: int) -> list[int]:
    """Indexes of the instructions whose opcode is ``opcode`` (the second half of an ld_imm64 has
    opcode 0, so it never matches)."""
    ops = bytes(code[::INSN_SIZE])
    out = []
    i = ops.find(opcode)
    while i >= 0:
        out.append(i)
        i = ops.find(opcode, i + 1)
    return out
