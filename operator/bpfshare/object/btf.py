"""A reader for BTF: an object's ``.BTF`` section, and the kernel's (vmlinux and module split BTF).

Format: include/uapi/linux/btf.h. A header, then a type section of variable-length records (type id
1 is the first record; 0 is void) and a string section. Records are indexed in one pass; the
kind-specific data (members, enumerators, parameters, array info, datasec entries) is decoded on
demand, and the name index is built on the first lookup by name.

Split BTF (a kernel module's, libbpf btf__parse_split): its type IDs continue after the base's
(the first split type is base.count), and its string offsets continue after the base's string
section. Lookups below an ID or offset the split BTF does not own go to the base.
"""

from __future__ import annotations

import enum
import struct
import sys
from array import array
from collections.abc import Iterator
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
_ENUM = struct.Struct("<Ii")
_ENUM64 = struct.Struct("<IIi")  # name_off, val_lo32, val_hi32
_PARAM = struct.Struct("<II")
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
# _EXTRA in 32-bit words, indexed by kind: the whole fixed part (0: no such kind), per vlen entry.
_FIXED_WORDS = [0] * 32
_VLEN_WORDS = [0] * 32
for _kind, (_fixed, _each) in _EXTRA.items():
    _FIXED_WORDS[_kind] = 3 + _fixed // 4
    _VLEN_WORDS[_kind] = _each // 4
_UNKNOWN_STEP = 1 << 40  # steps past any type section: ends the walk, then reported
_FIXED_WORDS = [w or _UNKNOWN_STEP for w in _FIXED_WORDS]
_MODIFIERS = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
_SIZED = frozenset({Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FLOAT, Kind.DATASEC})


class BtfType(NamedTuple):
    id: int
    kind: Kind
    name_off: int
    vlen: int
    size_or_type: int  # size for sized kinds, referenced type id otherwise
    extra: int  # offset of the kind-specific data in the type section
    kind_flag: bool = False


class Member(NamedTuple):
    name: str
    type: int
    offset: int  # in bits
    bitfield_size: int = 0  # non-zero for a bitfield of a kind_flag struct (btf_member_bitfield_size)


class Enumerator(NamedTuple):
    name: str
    value: int  # signed or unsigned as the enum's kind_flag says


class Param(NamedTuple):
    name: str
    type: int


class IntEncoding(NamedTuple):
    signed: bool
    char: bool
    bool: bool
    offset: int  # BTF_INT_OFFSET, in bits
    bits: int  # BTF_INT_BITS


class SecInfo(NamedTuple):
    type: int
    offset: int
    size: int


VOID = BtfType(0, Kind.UNKN, 0, 0, 0, 0)


_KINDS = list(Kind)


def essential_name(name: str) -> str:
    """``name`` without its ``___flavour`` suffix: the last ``X___Y`` separator whose X and Y are
    not underscores (libbpf bpf_core_essential_name_len / bpf_core_is_flavor_sep)."""
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1 : i + 4] == "___" and name[i + 4] != "_":
            return name[: i + 1]
    return name


class _Types:
    """``btf.types``: the types of a BTF (its own, not its base's) as a sequence, decoded on access;
    ``types[0]`` is void."""

    def __init__(self, btf: Btf) -> None:
        self._btf = btf

    def __len__(self) -> int:
        return len(self._btf._offsets)

    def __getitem__(self, index: int) -> BtfType:
        if not 0 <= index < len(self._btf._offsets):
            raise IndexError(index)
        return self._btf._decode(index)

    def __iter__(self) -> Iterator[BtfType]:
        decode = self._btf._decode
        return (decode(i) for i in range(len(self._btf._offsets)))


class Btf:
    def __init__(self, data: bytes, section: str = ".BTF", base: Btf | None = None) -> None:
        self.where = section
        self.base = base
        # The first type ID and string offset this BTF owns (non-zero for split BTF).
        self.start_id = base.count if base is not None else 1
        self.start_str = base.str_end if base is not None else 0
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
        # _offsets[i] is where (in 32-bit words) type ID start_id - 1 + i starts in the type section; entry 0 stands for
        # void (base BTF) or nothing (split). Records are decoded into BtfType when asked for: a
        # kernel's 100k+ types kept as tuples would cost tens of MiB.
        self._offsets = array("I", [0])
        self._name_bytes = b""
        # Answers of by_name and flavours: a process asks for the same few names again and again.
        self._lookups: dict[str, list[int]] = {}
        self._flavour_names: dict[str, list[str]] = {}
        self._index()
        self.types = _Types(self)

    @property
    def count(self) -> int:
        """One more than the highest type ID (libbpf btf__type_cnt)."""
        return self.start_id + len(self._offsets) - 1

    @property
    def str_end(self) -> int:
        return self.start_str + len(self.strings)

    def _index(self) -> None:
        """One pass over the records, as 32-bit words (every BTF record is 4-byte aligned): where each
        starts and its name offset. A kernel's ~130k records take tens of milliseconds this way;
        nothing else is decoded until asked for."""
        data, end = self.types_data, len(self.types_data)
        words = array("I")
        words.frombytes(data[: end - end % 4])
        if sys.byteorder != "little":
            words.byteswap()
        n = len(words)
        offsets, names = self._offsets, array("I", [0])
        add_offset, add_name = offsets.append, names.append
        fixed, per = _FIXED_WORDS, _VLEN_WORDS
        i = 0
        while i < n:  # the hot loop: an unknown kind steps past the end and is told apart below
            add_offset(i)
            add_name(words[i])
            info = words[i + 1] if i + 1 < n else 0
            kind = (info >> 24) & 0x1F
            i += fixed[kind] + per[kind] * (info & 0xFFFF)
        if i > n:
            last = offsets[-1]
            type_id = self.start_id + len(offsets) - 2
            if last + 3 > n:
                raise ObjectError(f"{self.where}: truncated type record at offset {last * 4}")
            kind = (words[last + 1] >> 24) & 0x1F
            if kind not in _EXTRA:
                raise ObjectError(f"{self.where}: type #{type_id} has unknown kind {kind}")
            raise ObjectError(f"{self.where}: type #{type_id} extends beyond the type section")
        if end % 4:
            raise ObjectError(f"{self.where}: truncated type record at offset {n * 4}")
        # Every record's name offset, packed: by_name searches it at C speed.
        if sys.byteorder != "little":
            names.byteswap()  # searched with little-endian needles
        self._name_bytes = names.tobytes()

    def _decode(self, index: int) -> BtfType:
        if index == 0:
            return VOID
        pos = self._offsets[index] * 4
        name_off, info, size_or_type = _TYPE.unpack_from(self.types_data, pos)
        type_id = self.start_id - 1 + index
        return BtfType(
            type_id,
            _KINDS[(info >> 24) & 0x1F],
            name_off,
            info & 0xFFFF,
            size_or_type,
            pos + _TYPE.size,
            bool(info >> 31),
        )

    # -- lookups ------------------------------------------------------------------------------------
    def string(self, offset: int) -> str:
        if offset < self.start_str and self.base is not None:
            return self.base.string(offset)
        return cstring(self.strings, offset - self.start_str, f"{self.where} string table")

    def type(self, type_id: int) -> BtfType:
        if type_id < self.start_id and self.base is not None and type_id >= 0:
            return self.base.type(type_id)
        index = type_id - self.start_id + 1 if type_id else 0
        if not 0 <= index < len(self._offsets) or (type_id and index == 0):
            raise ObjectError(f"{self.where}: type id {type_id} out of range ({self.count - 1} types)")
        return self._decode(index)

    def owner(self, type_id: int) -> Btf:
        """The BTF (this one or its base) whose records hold ``type_id``: kind-specific data is read
        from the owner's type section."""
        if type_id < self.start_id and self.base is not None:
            return self.base.owner(type_id)
        return self

    def string_offsets(self, text: str) -> list[int]:
        """Every string-table offset (this BTF's and its base's) at which ``text`` is a whole
        string, a tail-merged one included."""
        found = self.base.string_offsets(text) if self.base is not None else []
        needle = text.encode() + b"\0"
        strings, start = self.strings, self.start_str
        pos = strings.find(needle)
        while pos >= 0:
            found.append(start + pos)
            pos = strings.find(needle, pos + 1)
        return found

    def _ids_named_at(self, name_off: int) -> list[int]:
        """Type IDs (of this BTF, not its base) whose name is at ``name_off``: a search of the
        records' packed name offsets at C speed, instead of a dictionary of 100k names built up front."""
        out = []
        needle = _U32.pack(name_off)
        hay = self._name_bytes
        first = self.start_id - 1
        pos = hay.find(needle, 4)
        while pos >= 0:
            if pos % 4 == 0:
                out.append(first + pos // 4)
            pos = hay.find(needle, pos + 1)
        return out

    def by_name(self, name: str) -> list[int]:
        """Type IDs named ``name`` in this BTF only (not its base's types), in ID order."""
        if not name:
            return []
        cached = self._lookups.get(name)
        if cached is None:
            ids: set[int] = set()
            for off in self.string_offsets(name):
                ids.update(self._ids_named_at(off))
            cached = self._lookups[name] = sorted(ids)
        return cached

    def flavours(self, essential: str, *, own_only: bool = False) -> list[list[int]]:
        """Type IDs of each ``essential___<flavour>`` name (CO-RE candidates), base's first."""
        found = self.base.flavours(essential) if self.base is not None and not own_only else []
        if essential in self._flavour_names:
            return found + [self.by_name(full) for full in self._flavour_names[essential]]
        names: set[str] = set()
        btf: Btf | None = self
        needle = (essential + "___").encode()
        while btf is not None:  # the names may be in this BTF's strings or its base's
            strings = btf.strings
            pos = strings.find(needle)
            while pos >= 0:
                endpos = strings.find(b"\0", pos)
                full = strings[pos:endpos].decode("utf-8", "replace")
                if essential_name(full) == essential:
                    names.add(full)
                pos = strings.find(needle, pos + 1)
            btf = btf.base
        self._flavour_names[essential] = [full for full in sorted(names) if self.by_name(full)]
        return found + [self.by_name(full) for full in self._flavour_names[essential]]

    def find(self, name: str, kind: Kind | None = None) -> list[int]:
        """Type IDs named ``name`` (of ``kind`` if given), base first: libbpf searches vmlinux,
        then a module's own types."""
        found = self.base.find(name, kind) if self.base is not None else []
        own = self.by_name(name)
        if kind is not None:
            own = [i for i in own if self.type(i).kind is kind]
        return found + own

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
        elem, index, nelems = _ARRAY.unpack_from(self._data(t), t.extra)
        return elem, index, nelems

    def _data(self, t: BtfType) -> bytes:
        return self.owner(t.id).types_data

    def _entries(self, t: BtfType, layout: struct.Struct) -> list[tuple[int, ...]]:
        return list(layout.iter_unpack(self._data(t)[t.extra : t.extra + t.vlen * layout.size]))

    def members(self, t: BtfType) -> list[Member]:
        """Members with bit offsets; with kind_flag set, the offset word packs the bitfield size
        in its top 8 bits (btf_member_bit_offset / btf_member_bitfield_size)."""
        if t.kind not in (Kind.STRUCT, Kind.UNION):
            raise ObjectError(f"{self.where}: {self.describe(t)} is not a struct or union")
        if t.kind_flag:
            return [
                Member(self.string(name_off), typ, offset & 0xFFFFFF, offset >> 24)
                for name_off, typ, offset in self._entries(t, _MEMBER)
            ]
        return [Member(self.string(name_off), typ, offset) for name_off, typ, offset in self._entries(t, _MEMBER)]

    def enumerators(self, t: BtfType) -> list[Enumerator]:
        """ENUM and ENUM64 values; kind_flag set means signed (BTF_KIND_ENUM's btf_kflag)."""
        if t.kind is Kind.ENUM:
            out = []
            for name_off, value in self._entries(t, _ENUM):
                out.append(Enumerator(self.string(name_off), value if t.kind_flag else value & 0xFFFFFFFF))
            return out
        if t.kind is Kind.ENUM64:
            out = []
            for name_off, lo, hi in self._entries(t, _ENUM64):
                value = ((hi & 0xFFFFFFFF) << 32) | lo
                if t.kind_flag and value >= 1 << 63:
                    value -= 1 << 64
                out.append(Enumerator(self.string(name_off), value))
            return out
        raise ObjectError(f"{self.where}: {self.describe(t)} is not an enum")

    def params(self, t: BtfType) -> list[Param]:
        """A FUNC_PROTO's parameters (its return type is ``t.size_or_type``)."""
        if t.kind is not Kind.FUNC_PROTO:
            raise ObjectError(f"{self.where}: {self.describe(t)} is not a function prototype")
        return [Param(self.string(name_off), typ) for name_off, typ in self._entries(t, _PARAM)]

    def int_encoding(self, t: BtfType) -> IntEncoding:
        if t.kind is not Kind.INT:
            raise ObjectError(f"{self.where}: {self.describe(t)} is not an int")
        (word,) = _U32.unpack_from(self._data(t), t.extra)
        enc = (word >> 24) & 0x0F
        return IntEncoding(bool(enc & 1), bool(enc & 2), bool(enc & 4), (word >> 16) & 0xFF, word & 0xFF)

    def secinfo(self, t: BtfType) -> list[SecInfo]:
        if t.kind is not Kind.DATASEC:
            raise ObjectError(f"{self.where}: {self.describe(t)} is not a datasec")
        return [SecInfo(*entry) for entry in self._entries(t, _SECINFO)]

    def datasec(self, name: str) -> BtfType | None:
        """The DATASEC describing the ELF section ``name``, if any."""
        for t in self.types:
            if t.kind is Kind.DATASEC and self.string(t.name_off) == name:
                return t
        return None
