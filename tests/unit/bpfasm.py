"""Helpers to look at eBPF instructions and at objects in tests."""

from __future__ import annotations

import functools
import re
import struct
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
from elftools.elf.elffile import ELFFile

LD_IMM64 = 0x18
CALL = 0x85


class Insn(NamedTuple):
    op: int
    dst: int
    src: int
    off: int
    imm: int


def decode(code: bytes) -> list[Insn]:
    out = []
    for op, regs, off, imm in struct.iter_unpack("<BBhi", code):
        out.append(Insn(op, regs & 0xF, regs >> 4, off, imm))
    return out


def calls(code: bytes) -> list[tuple[int, int]]:
    """``(call index, target index)`` of every bpf-to-bpf call."""
    return [(i, i + ins.imm + 1) for i, ins in enumerate(decode(code)) if ins.op == CALL and ins.src == 1]


def normalized(code: bytes) -> bytes:
    """Instructions with the fields the linker rewrites (call and ld_imm64 imm) zeroed."""
    out = bytearray(code)
    insns = decode(code)
    for i, ins in enumerate(insns):
        if (ins.op == CALL and ins.src == 1) or ins.op == LD_IMM64:
            struct.pack_into("<i", out, i * 8 + 4, 0)
            if ins.op == LD_IMM64:
                struct.pack_into("<i", out, (i + 1) * 8 + 4, 0)
    return bytes(out)


def function_code(path: Path, section: str, name: str) -> bytes:
    """The raw instructions of one function, found with llvm-readelf (independently of the reader)."""
    with path.open("rb") as f:
        found = ELFFile(f).get_section_by_name(section)
        assert found is not None, f"{path.name} has no section {section}"
        data = found.data()
    value, size = readelf_symbols(path)[name]
    return data[value : value + size]


_SYM = re.compile(r"^\s*\d+:\s+([0-9a-f]+)\s+(\d+)\s+(\w+)\s+(\w+)\s+\w+\s+(\S+)\s+(\S+)$")


def tool(name: str) -> str:
    """Path of an LLVM/bpftool binary, or skip the test."""
    import shutil

    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs {name}")
    return path


def run(*args: str) -> str:
    return subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True, check=True).stdout


@functools.cache
def readelf_symbols(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (value, size) of FUNC and OBJECT symbols, from ``llvm-readelf -s`` (run once per
    object: the objects of a session never change). Read it, do not change it."""
    out = run("llvm-readelf", "-s", str(path))
    syms = {}
    for line in out.splitlines():
        m = _SYM.match(line)
        if m and m.group(3) in ("FUNC", "OBJECT"):
            syms[m.group(6)] = (int(m.group(1), 16), int(m.group(2)))
    return syms
