"""A reader for the ``.BTF`` section: just what map definitions need (types, sizes, names).

Format: include/uapi/linux/btf.h. A header, then a type section of variable-length records (type id
1 is the first record; 0 is void) and a string section. Records are indexed in one pass; the
kind-specific data (members, array info, datasec entries) is decoded on demand.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from bpfshare.errors import ObjectError
from bpfshare.object.guard import cstring

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_U32 = struct.Struct("<I")
_ARRAY = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
_SECINFO = struct.Struct("<III")
MAX_CHAIN = 64  # typedef/qualifier/pointer chains longer than this are cycles


class Kind(enum.IntEnum):
    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Bytes of kind-specific data after the common 12-byte record: (fixed, per vlen entry).
_EXTRA: dict[int, tuple[int, int]] = {
    Kind.INT: (4, 0),
    Kind.PTR: (0, 0),
    Kind.ARRAY: (12, 0),
    Kind.STRUCT: (0, 12),
    Kind.UNION: (0, 12),
    Kind.ENUM: (0, 8),
    Kind.FWD: (0, 0),
    Kind.TYPEDEF: (0, 0),
    Kind.VOLATILE: (0, 0),
    Kind.CONST: (0, 0),
    Kind.RESTRICT: (0, 0),
    Kind.FUNC: (0, 0),
    Kind.FUNC_PROTO: (0, 8),
    Kind.VAR: (4, 0),
    Kind.DATASEC: (0, 12),
    Kind.FLOAT: (0, 0),
    Kind.DECL_TAG: (4, 0),
    Kind.TYPE_TAG: (0, 0),
    Kind.ENUM64: (0, 12),
}
_MODIFIERS = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
_SIZED = frozenset({Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FLOAT, Kind.DATASEC})


class BtfType(NamedTuple):
    id: int
    kind: Kind
    name_off: int
    vlen: int
    size_or_type: int  # size for sized kinds, referenced type id otherwise
    extra: int  # offset of the kind-specific data in the type section


class Member(NamedTuple):
    name: str
    type: int
    offset: int


class SecInfo(NamedTuple):
    type: int
    offset: int
    size: int


VOID = BtfType(0, Kind.UNKN, 0, 0, 0, 0)


class Btf:
    def __init__(self, data: bytes, section: str = ".BTF") -> None:
        self.where = section
        if len(data) < _HEADER.size:
            raise ObjectError(f"{section}: shorter than the BTF header ({len(data)} bytes)")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != BTF_MAGIC:
            raise ObjectError(f"{section}: bad magic {magic:#x} (expected {BTF_MAGIC:#x}, little-endian)")
        if version != 1:
            raise ObjectError(f"{section}: unsupported BTF version {version}")
        if hdr_len < _HEADER.size:
            raise ObjectError(f"{section}: bad header length {hdr_len}")
        for what, off, size in (("type", type_off, type_len), ("string", str_off, str_len)):
            if hdr_len + off + size > len(data):
                raise ObjectError(
                    f"{section}: {what} section (offset {off}, {size} bytes) "
                    f"extends beyond the section ({len(data)} bytes)"
                )
        self.types_data = data[hdr_len + type_off : hdr_len + type_off + type_len]
        self.strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types: list[BtfType] = [VOID]
        self._index()

    def _index(self) -> None:
        data, types, end = self.types_data, self.types, len(self.types_data)
        pos = 0
        unpack = _TYPE.unpack_from
        while pos < end:
            if pos + _TYPE.size > end:
                raise ObjectError(f"{self.where}: truncated type record at offset {pos}")
            name_off, info, size_or_type = unpack(data, pos)
            raw_kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            layout = _EXTRA.get(raw_kind)
            if layout is None:
                raise ObjectError(f"{self.where}: type #{len(types)} has unknown kind {raw_kind}")
            extra = pos + _TYPE.size
            pos = extra + layout[0] + layout[1] * vlen
            if pos > end:
                raise ObjectError(f"{self.where}: type #{len(types)} extends beyond the type section")
            types.append(BtfType(len(types), Kind(raw_kind), name_off, vlen, size_or_type, extra))

    # -- lookups ------------------------------------------------------------------------------------
    def string(self, offset: int) -> str:
        return cstring(self.strings, offset, f"{self.where} string table")

    def type(self, type_id: int) -> BtfType:
        if not 0 <= type_id < len(self.types):
            raise ObjectError(f"{self.where}: type id {type_id} out of range ({len(self.types) - 1} types)")
        return self.types[type_id]

    def name(self, t: BtfType) -> str:
        return self.string(t.name_off)

    def describe(self, t: BtfType) -> str:
        name = self.name(t)
        return f"{t.kind.name.lower()} {name!r} (#{t.id})" if name else f"{t.kind.name.lower()} #{t.id}"

    def skip_mods(self, type_id: int) -> BtfType:
        """Follow typedefs and qualifiers (const, volatile, restrict, type tags)."""
        t = self.type(type_id)
        for _ in range(MAX_CHAIN):
            if t.kind not in _MODIFIERS:
                return t
            t = self.type(t.size_or_type)
        raise ObjectError(f"{self.where}: type chain from #{type_id} is too long (a cycle?)")

    def size(self, type_id: int) -> int:
        """The size in bytes of a type, like the kernel's btf_resolve_size."""
        t = self.type(type_id)
        multiplier = 1
        for _ in range(MAX_CHAIN):
            if t.kind in _SIZED:
                return multiplier * t.size_or_type
            if t.kind is Kind.PTR:
                return multiplier * 8
            if t.kind is Kind.ARRAY:
                elem, _index, nelems = self.array(t)
                multiplier *= nelems
                t = self.type(elem)
            elif t.kind in _MODIFIERS or t.kind is Kind.VAR:
                t = self.type(t.size_or_type)
            else:
                raise ObjectError(f"{self.where}: {self.describe(t)} has no size")
        raise ObjectError(f"{self.where}: type chain from #{type_id} is too long (a cycle?)")

    # -- kind-specific data ---------------------------------------------------------------------------
    def array(self, t: BtfType) -> tuple[int, int, int]:
        """(element type, index type, number of elements) of an ARRAY."""
        if t.kind is not Kind.ARRAY:
            raise ObjectError(f"{self.where}: {self.describe(t)} is not an array")
        elem, index, nelems = _ARRAY.unpack_from(self.types_data, t.extra)
        return elem, index, nelems

    def members(self, t: BtfType) -> list[Member]:
        if t.kind not in (Kind.STRUCT, Kind.UNION):
            raise ObjectError(f"{self.where}: {self.describe(t)} is not a struct or union")
        return [
            Member(self.string(name_off), typ, offset)
            for name_off, typ, offset in _MEMBER.iter_unpack(self.types_data[t.extra : t.extra + t.vlen * _MEMBER.size])
        ]

    def secinfo(self, t: BtfType) -> list[SecInfo]:
        if t.kind is not Kind.DATASEC:
            raise ObjectError(f"{self.where}: {self.describe(t)} is not a datasec")
        return [
            SecInfo(*entry)
            for entry in _SECINFO.iter_unpack(self.types_data[t.extra : t.extra + t.vlen * _SECINFO.size])
        ]

    def datasec(self, name: str) -> BtfType | None:
        """The DATASEC describing the ELF section ``name``, if any."""
        for t in self.types:
            if t.kind is Kind.DATASEC and self.string(t.name_off) == name:
                return t
        return None
