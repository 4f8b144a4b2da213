"""Hand-built BTF blobs for unit tests: types appended one by one, IDs returned, ``bytes()`` at the end."""

from __future__ import annotations

import struct

from bpfshare.object.btf import BTF_MAGIC, Kind


class BtfBuilder:
    def __init__(self, base: BtfBuilder | None = None) -> None:
        self.base = base
        self.records: list[bytes] = []
        self.strings = bytearray(b"" if base is not None else b"\0")
        self._str_base = len(base.strings) + base._str_base if base is not None else 0
        self._str_index: dict[str, int] = {}

    @property
    def next_id(self) -> int:
        first = self.base.next_id if self.base is not None else 1
        return first + len(self.records)

    def s(self, name: str) -> int:
        if not name:
            return 0
        if name not in self._str_index:
            self._str_index[name] = self._str_base + len(self.strings)
            self.strings += name.encode() + b"\0"
        return self._str_index[name]

    def add(self, kind: Kind, name: str, vlen: int, size_or_type: int, extra: bytes = b"", kflag: bool = False) -> int:
        info = (int(kind) << 24) | vlen | (1 << 31 if kflag else 0)
        self.records.append(struct.pack("<III", self.s(name), info, size_or_type) + extra)
        return self.next_id - 1

    def int_(self, name: str, size: int, signed: bool = False, bits: int | None = None, char: bool = False) -> int:
        enc = (1 if signed else 0) | (2 if char else 0)
        word = (enc << 24) | (bits if bits is not None else size * 8)
        return self.add(Kind.INT, name, 0, size, struct.pack("<I", word))

    def ptr(self, target: int) -> int:
        return self.add(Kind.PTR, "", 0, target)

    def typedef(self, name: str, target: int) -> int:
        return self.add(Kind.TYPEDEF, name, 0, target)

    def const(self, target: int) -> int:
        return self.add(Kind.CONST, "", 0, target)

    def array(self, elem: int, index: int, n: int) -> int:
        return self.add(Kind.ARRAY, "", 0, 0, struct.pack("<III", elem, index, n))

    def struct(
        self, name: str, size: int, members: list[tuple[str, int, int] | tuple[str, int, int, int]], union: bool = False
    ) -> int:
        """members: (name, type, bit offset[, bitfield size]); any bitfield sets kind_flag."""
        kflag = any(len(m) == 4 and m[3] for m in members)
        extra = b""
        for m in members:
            off = m[2] | ((m[3] if len(m) == 4 else 0) << 24) if kflag else m[2]
            extra += struct.pack("<III", self.s(m[0]), m[1], off)
        return self.add(Kind.UNION if union else Kind.STRUCT, name, len(members), size, extra, kflag)

    def fwd(self, name: str, union: bool = False) -> int:
        return self.add(Kind.FWD, name, 0, 0, kflag=union)

    def enum(self, name: str, values: list[tuple[str, int]], size: int = 4, signed: bool = False) -> int:
        extra = b"".join(struct.pack("<Ii", self.s(n), v if v < 1 << 31 else v - (1 << 32)) for n, v in values)
        return self.add(Kind.ENUM, name, len(values), size, extra, signed)

    def enum64(self, name: str, values: list[tuple[str, int]], signed: bool = False) -> int:
        extra = b""
        for n, v in values:
            v &= (1 << 64) - 1
            extra += struct.pack("<IIi", self.s(n), v & 0xFFFFFFFF, (v >> 32) - (1 << 32) if v >> 63 else v >> 32)
        return self.add(Kind.ENUM64, name, len(values), 8, extra, signed)

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        extra = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        return self.add(Kind.FUNC_PROTO, "", len(params), ret, extra)

    def func(self, name: str, proto: int) -> int:
        return self.add(Kind.FUNC, name, 0, proto)

    def __bytes__(self) -> bytes:
        types = b"".join(self.records)
        header = struct.pack("<HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return header + types + bytes(self.strings)
