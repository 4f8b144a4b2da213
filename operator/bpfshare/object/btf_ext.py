"""``.BTF.ext``: func_info and line_info records (passed for programs with callbacks); CO-RE relocation records.

Each core_relo record is struct bpf_core_relo (include/uapi/linux/bpf.h): insn_off (bytes, in the
record's ELF section), type_id (in .BTF), access_str_off (a .BTF string such as "0:1:2") and kind.
The linker maps them to linked instruction indexes; the loader resolves them (``load.core``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from bpfshare.errors import ObjectError
from bpfshare.object.btf import BTF_MAGIC, Btf

_HEADER = struct.Struct("<HBBIIIII")  # magic .. hdr_len, func_info off/len, line_info off/len
_CORE = struct.Struct("<II")  # core_relo_off, core_relo_len (header length >= 32)
_U32 = struct.Struct("<I")
_INFO_SEC = struct.Struct("<II")  # sec_name_off, num_info
_RELO = struct.Struct("<IIII")  # insn_off, type_id, access_str_off, kind
CORE_KIND_MAX = 12  # BPF_CORE_TYPE_MATCHES


class CoreRelocation(NamedTuple):
    section: str  # ELF section of the instruction ("" if the name cannot be read)
    insn_off: int  # byte offset of the instruction in that section
    type_id: int = 0
    access: str = ""
    kind: int = 0


def _header(data: bytes, where: str) -> tuple[int, ...]:
    """The header's hdr_len, func_info off/len, line_info off/len and, if the header has them,
    core_relo off/len (0, 0 for a header written before CO-RE existed)."""
    if len(data) < _HEADER.size:
        raise ObjectError(f"{where}: shorter than its header ({len(data)} bytes)")
    magic, _version, _flags, hdr_len, *info = _HEADER.unpack_from(data)
    if magic != BTF_MAGIC:
        raise ObjectError(f"{where}: bad magic {magic:#x}")
    if hdr_len < _HEADER.size or hdr_len > len(data):
        raise ObjectError(f"{where}: bad header length {hdr_len}")
    core = _CORE.unpack_from(data, _HEADER.size) if hdr_len >= _HEADER.size + _CORE.size else (0, 0)
    return (hdr_len, *info, *core)


def _subsection(
    data: bytes, hdr_len: int, offset: int, length: int, min_size: int, where: str
) -> Iterator[tuple[int, int, int, int]]:
    """Walk one subsection (libbpf btf_ext_parse_info): a record size, then per ELF section its
    name offset and record count, then the records. Yields (name offset, first record's offset,
    count, record size) for each section."""
    if length == 0:
        return
    start = hdr_len + offset
    end = start + length
    if end > len(data) or length < _U32.size:
        raise ObjectError(f"{where}: subsection (offset {offset}, {length} bytes) is out of bounds")
    (record_size,) = _U32.unpack_from(data, start)
    if record_size < min_size or record_size % 4:
        raise ObjectError(f"{where}: record size {record_size} is smaller than {min_size} or unaligned")
    pos = start + _U32.size
    while pos < end:
        if pos + _INFO_SEC.size > end:
            raise ObjectError(f"{where}: truncated section header at offset {pos}")
        name_off, count = _INFO_SEC.unpack_from(data, pos)
        pos += _INFO_SEC.size
        if pos + count * record_size > end:
            raise ObjectError(f"{where}: records at offset {pos} extend beyond the subsection")
        yield name_off, pos, count, record_size
        pos += count * record_size


def core_relocations(data: bytes, btf: Btf | None, where: str = ".BTF.ext") -> list[CoreRelocation]:
    """Every CO-RE relocation record in a ``.BTF.ext`` section."""
    hdr_len, *_info, core_off, core_len = _header(data, where)
    out = []
    for name_off, pos, count, record_size in _subsection(
        data, hdr_len, core_off, core_len, _RELO.size, f"{where} core_relo"
    ):
        try:
            section = btf.string(name_off) if btf is not None else ""
        except ObjectError:
            section = ""
        for i in range(count):
            insn_off, type_id, access_off, kind = _RELO.unpack_from(data, pos + i * record_size)
            record = f"{where}: core_relo record {i} of section {section or '?'}"
            if btf is None:
                raise ObjectError(f"{record}: the object has no .BTF for its type and access string")
            if insn_off % 8:
                raise ObjectError(f"{record}: instruction offset {insn_off} is not instruction-aligned")
            if kind > CORE_KIND_MAX:
                raise ObjectError(f"{record}: unknown relocation kind {kind}")
            try:
                btf.type(type_id)
                access = btf.string(access_off)
            except ObjectError as exc:
                raise ObjectError(f"{record}: {exc}") from None
            out.append(CoreRelocation(section, insn_off, type_id, access, kind))
    return out


# -- func_info and line_info ------------------------------------------------------------------------
FUNC_INFO_SIZE = 8  # struct bpf_func_info: insn_off, type_id
LINE_INFO_SIZE = 16  # struct bpf_line_info: insn_off, file_name_off, line_off, line_col

# By ELF section: (byte offset of the instruction in the section, the rest of the record).
InfoRecords = dict[str, list[tuple[int, bytes]]]


def func_and_line_info(data: bytes, btf: Btf, where: str = ".BTF.ext") -> tuple[InfoRecords, InfoRecords]:
    """The func_info and line_info records of a ``.BTF.ext`` section, by ELF section.

    As libbpf's btf_ext_setup_func_info / btf_ext_setup_line_info read them. Records are cut to the
    size the kernel knows (a newer, larger record keeps its known head: the kernel would want the
    rest zero anyway), so the loader passes them with the kernel's record sizes.
    """
    hdr_len, func_off, func_len, line_off, line_len, *_core = _header(data, where)
    funcs = _info(data, hdr_len, func_off, func_len, FUNC_INFO_SIZE, btf, f"{where} func_info")
    lines = _info(data, hdr_len, line_off, line_len, LINE_INFO_SIZE, btf, f"{where} line_info")
    return funcs, lines


def _info(data: bytes, hdr_len: int, offset: int, length: int, min_size: int, btf: Btf, where: str) -> InfoRecords:
    out: InfoRecords = {}
    for name_off, pos, count, record_size in _subsection(data, hdr_len, offset, length, min_size, where):
        records = out.setdefault(btf.string(name_off), [])
        for i in range(count):
            rec = data[pos + i * record_size : pos + i * record_size + min_size]
            records.append((_U32.unpack_from(rec)[0], rec[_U32.size :]))
    return out
