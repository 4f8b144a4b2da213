"""CO-RE: rewrite a program's instructions for the kernel's types, as libbpf's relo_core.c does.

For each relocation (``spec.CoreRelocation``): the local spec is parsed from the object's BTF
(bpf_core_parse_spec); candidates are the target types of the same kind whose essential name
(without ``___flavour``) equals the local type's, in vmlinux, else in the modules
(bpf_core_find_cands); each candidate is matched (bpf_core_spec_match) and its value computed
(bpf_core_calc_relo); all matching candidates must agree (bpf_core_calc_relo_insn), and the
instruction is patched (bpf_core_patch_insn). A relocation no candidate satisfies poisons its
instruction (bpf_core_poison_insn: ``call 0xbad2310``): harmless in dead code (a program guarded
by bpf_core_field_exists), and if the verifier reaches it, the loader names what was missing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.load.core_match import essential_name, fields_are_compat, types_are_compat, types_match
from bpfshare.object.btf import Btf, Kind
from bpfshare.object.insn import CALL, LD_IMM64
from bpfshare.object.kernel_btf import KernelBtf
from bpfshare.spec import INSN_SIZE, CoreKind, CoreRelocation

POISON_IMM = 0xBAD2310  # libbpf's: the verifier says "invalid func unknown#195896080"
SPEC_MAX_LEN = 64  # BPF_CORE_SPEC_MAX_LEN

_FIELD = frozenset(
    {
        CoreKind.FIELD_BYTE_OFFSET,
        CoreKind.FIELD_BYTE_SIZE,
        CoreKind.FIELD_EXISTS,
        CoreKind.FIELD_SIGNED,
        CoreKind.FIELD_LSHIFT_U64,
        CoreKind.FIELD_RSHIFT_U64,
    }
)
_TYPE = frozenset(
    {CoreKind.TYPE_ID_LOCAL, CoreKind.TYPE_ID_TARGET, CoreKind.TYPE_EXISTS, CoreKind.TYPE_MATCHES, CoreKind.TYPE_SIZE}
)
_ENUMVAL = frozenset({CoreKind.ENUMVAL_EXISTS, CoreKind.ENUMVAL_VALUE})
_U64 = (1 << 64) - 1

# BPF opcode parts (include/uapi/linux/bpf_common.h)
_CLASS_LD, _CLASS_LDX, _CLASS_ST, _CLASS_STX, _CLASS_ALU, _CLASS_ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x07
_SIZE_BYTES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}  # BPF_W, BPF_H, BPF_B, BPF_DW
_BYTES_SIZE = {v: k for k, v in _SIZE_BYTES.items()}


class CoreError(UnsupportedError):
    """A CO-RE relocation that cannot be applied (not merely unresolved: that poisons)."""


@dataclass
class Accessor:
    type_id: int  # the composite (named member), the enum, or the array element type
    idx: int
    name: str = ""  # member or enumerator name; "" for an array index


@dataclass
class Spec:
    """struct bpf_core_spec."""

    btf: Btf
    root_type_id: int
    kind: CoreKind
    accessors: list[Accessor] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    bit_offset: int = 0


@dataclass
class Result:
    """struct bpf_core_relo_res."""

    orig_val: int = 0
    new_val: int = 0
    poison: bool = False
    validate: bool = True
    fail_memsz_adjust: bool = False
    orig_sz: int = 0
    new_sz: int = 0
    orig_type_id: int = 0
    new_type_id: int = 0


@dataclass(frozen=True)
class Poisoned:
    """An instruction poisoned because its relocation found no match: why, for the user."""

    insn: int
    reason: str


class _Poison(Exception):
    """-EUCLEAN in libbpf: the relocation's instruction must be poisoned."""


def _is_flex_arr(btf: Btf, acc: Accessor | None, nelems: int) -> bool:
    """is_flex_arr: a zero-length array that is the last member of its struct."""
    if acc is None or not acc.name or nelems > 0:
        return False
    return acc.idx == btf.type(acc.type_id).vlen - 1


def parse_spec(btf: Btf, type_id: int, access: str, kind: CoreKind) -> Spec:
    """bpf_core_parse_spec."""
    spec = Spec(btf, type_id, kind)
    try:
        spec.raw = [int(part) for part in access.split(":")]
    except ValueError:
        raise ObjectError(f"CO-RE access string {access!r} is malformed") from None
    if not spec.raw or len(spec.raw) > SPEC_MAX_LEN or any(i < 0 for i in spec.raw):
        raise ObjectError(f"CO-RE access string {access!r} is malformed")
    if kind in _TYPE:
        if access != "0":
            raise ObjectError(f"CO-RE {kind.name} relocation with access string {access!r} (expected '0')")
        return spec
    t = btf.skip_mods(type_id)
    if kind in _ENUMVAL:
        if t.kind not in (Kind.ENUM, Kind.ENUM64) or len(spec.raw) != 1:
            raise ObjectError(f"CO-RE {kind.name} relocation on {btf.describe(t)}, not an enum")
        values = btf.enumerators(t)
        if spec.raw[0] >= len(values):
            raise ObjectError(f"CO-RE {kind.name}: {btf.describe(t)} has no enumerator #{spec.raw[0]}")
        spec.accessors.append(Accessor(t.id, spec.raw[0], values[spec.raw[0]].name))
        return spec
    type_id = t.id
    spec.bit_offset = spec.raw[0] * btf.size(type_id) * 8
    spec.accessors.append(Accessor(type_id, spec.raw[0]))
    for index in spec.raw[1:]:
        t = btf.skip_mods(type_id)
        type_id = t.id
        if t.kind in (Kind.STRUCT, Kind.UNION):
            members = btf.members(t)
            if index >= len(members):
                raise ObjectError(f"CO-RE access {access!r}: {btf.describe(t)} has no member #{index}")
            m = members[index]
            spec.bit_offset += m.offset
            if m.name:
                spec.accessors.append(Accessor(type_id, index, m.name))
            type_id = m.type
        elif t.kind is Kind.ARRAY:
            elem, _index, nelems = btf.array(t)
            et = btf.skip_mods(elem)
            type_id = et.id
            if not _is_flex_arr(btf, spec.accessors[-1], nelems) and index >= nelems:
                raise ObjectError(f"CO-RE access {access!r}: index {index} beyond {btf.describe(t)}")
            spec.accessors.append(Accessor(type_id, index))
            spec.bit_offset += index * btf.size(type_id) * 8
        else:
            raise ObjectError(f"CO-RE access {access!r} of [{spec.root_type_id}] reaches {btf.describe(t)}")
    return spec


def _match_member(local: Btf, acc: Accessor, targ: Btf, targ_id: int, spec: Spec) -> tuple[bool, int]:
    """bpf_core_match_member: find the local member by name in the target composite, looking into
    anonymous members; returns (found, the matched member's type)."""
    lt = local.type(acc.type_id)
    local_member = local.members(lt)[acc.idx]
    tt = targ.skip_mods(targ_id)
    if tt.kind not in (Kind.STRUCT, Kind.UNION):
        return False, 0
    for i, m in enumerate(targ.members(tt)):
        if len(spec.raw) >= SPEC_MAX_LEN:
            raise CoreError("CO-RE: struct/union/array nesting too deep")
        spec.bit_offset += m.offset
        spec.raw.append(i)
        if not m.name:
            found, next_id = _match_member(local, acc, targ, m.type, spec)
            if found:
                return True, next_id
        elif m.name == local_member.name:
            spec.accessors.append(Accessor(tt.id, i, m.name))
            if fields_are_compat(local, local_member.type, targ, m.type):
                return True, m.type
            spec.accessors.pop()
            return False, 0
        spec.bit_offset -= m.offset
        spec.raw.pop()
    return False, 0


def match_spec(local: Spec, targ: Btf, targ_id: int, upto: int | None = None) -> Spec | None:
    """bpf_core_spec_match: the target spec of candidate ``targ_id``, or None if it does not match.
    ``upto`` matches only the first accessors (to name the one that fails)."""
    spec = Spec(targ, targ_id, local.kind)
    if local.kind in _TYPE:
        if local.kind is CoreKind.TYPE_MATCHES:
            ok = types_match(local.btf, local.root_type_id, targ, targ_id)
        else:
            ok = types_are_compat(local.btf, local.root_type_id, targ, targ_id)
        return spec if ok else None
    if local.kind in _ENUMVAL:
        tt = targ.skip_mods(targ_id)
        if tt.kind not in (Kind.ENUM, Kind.ENUM64):
            return None
        want = essential_name(local.accessors[0].name)
        for i, e in enumerate(targ.enumerators(tt)):
            if essential_name(e.name) == want:
                spec.accessors.append(Accessor(tt.id, i, e.name))
                spec.raw.append(i)
                return spec
        return None
    for i, acc in enumerate(local.accessors[:upto]):
        tt = targ.skip_mods(targ_id)
        targ_id = tt.id
        if acc.name:
            found, targ_id = _match_member(local.btf, acc, targ, targ_id, spec)
            if not found:
                return None
        else:
            if i > 0:
                if tt.kind is not Kind.ARRAY:
                    return None
                elem, _index, nelems = targ.array(tt)
                if not _is_flex_arr(targ, spec.accessors[-1], nelems) and acc.idx >= nelems:
                    return None
                targ_id = targ.skip_mods(elem).id
            if len(spec.raw) >= SPEC_MAX_LEN:
                raise CoreError("CO-RE: struct/union/array nesting too deep")
            spec.accessors.append(Accessor(targ_id, acc.idx))
            spec.raw.append(acc.idx)
            spec.bit_offset += acc.idx * targ.size(targ_id) * 8
    return spec


def _field_value(kind: CoreKind, spec: Spec | None, res: Result, local: bool) -> None:
    """bpf_core_calc_field_relo, storing into res.orig_* (local) or res.new_*."""
    sz, type_id = 0, 0
    if kind is CoreKind.FIELD_EXISTS:
        _store(res, local, 1 if spec is not None else 0, 0, 0)
        return
    if spec is None:
        raise _Poison()
    btf = spec.btf
    acc = spec.accessors[-1]
    if not acc.name:  # a[n]: an array element
        if kind is CoreKind.FIELD_BYTE_OFFSET:
            val, sz, type_id = spec.bit_offset // 8, btf.size(acc.type_id), acc.type_id
        elif kind is CoreKind.FIELD_BYTE_SIZE:
            val = btf.size(acc.type_id)
        else:
            raise CoreError(f"CO-RE {kind.name} relocation cannot be applied to an array access")
        if local:
            res.validate = True
        _store(res, local, val, sz, type_id)
        return
    t = btf.type(acc.type_id)
    m = btf.members(t)[acc.idx]
    mt = btf.skip_mods(m.type)
    bit_off, bit_sz = spec.bit_offset, m.bitfield_size
    bitfield = bit_sz > 0
    if bitfield:
        byte_sz = mt.size_or_type
        byte_off = bit_off // 8 // byte_sz * byte_sz
        # the smallest load that holds the bitfield
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise CoreError(f"CO-RE: bitfield {m.name!r} cannot be read with a 64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = btf.size(mt.id)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    # for bitfields, relocatable aspects are ambiguous (the compiler may disagree): no validation
    if local:
        res.validate = not bitfield
    if kind is CoreKind.FIELD_BYTE_OFFSET:
        val = byte_off
        if not bitfield:
            sz, type_id = byte_sz, mt.id
    elif kind is CoreKind.FIELD_BYTE_SIZE:
        val = byte_sz
    elif kind is CoreKind.FIELD_SIGNED:
        val = int(
            (mt.kind in (Kind.ENUM, Kind.ENUM64) and mt.kind_flag)
            or (mt.kind is Kind.INT and btf.int_encoding(mt).signed)
        )
        if local:
            res.validate = True  # signedness is never ambiguous
    elif kind is CoreKind.FIELD_LSHIFT_U64:
        val = 64 - (bit_off + bit_sz - byte_off * 8)  # little-endian
    elif kind is CoreKind.FIELD_RSHIFT_U64:
        val = 64 - bit_sz
        if local:
            res.validate = True
    else:
        raise CoreError(f"CO-RE: unknown field relocation {kind.name}")
    _store(res, local, val, sz, type_id)


def _store(res: Result, local: bool, val: int, sz: int, type_id: int) -> None:
    if local:
        res.orig_val, res.orig_sz, res.orig_type_id = val, sz, type_id
    else:
        res.new_val, res.new_sz, res.new_type_id = val, sz, type_id


def _type_value(kind: CoreKind, spec: Spec | None, res: Result, local: bool) -> int:
    """bpf_core_calc_type_relo: type-based relocations give 0 when the type is not found."""
    if spec is None:
        return 0
    if kind is CoreKind.TYPE_ID_TARGET:
        if local:
            res.validate = False  # the local type ID may change when objects are linked
        return spec.root_type_id
    if kind in (CoreKind.TYPE_EXISTS, CoreKind.TYPE_MATCHES):
        return 1
    if kind is CoreKind.TYPE_SIZE:
        return spec.btf.size(spec.root_type_id)
    raise CoreError(f"CO-RE: unexpected type relocation {kind.name}")


def _enumval_value(kind: CoreKind, spec: Spec | None) -> int:
    """bpf_core_calc_enumval_relo; an ENUM's value is a signed 32-bit one widened to 64 bits."""
    if kind is CoreKind.ENUMVAL_EXISTS:
        return 1 if spec is not None else 0
    if spec is None:
        raise _Poison()
    acc = spec.accessors[0]
    t = spec.btf.type(acc.type_id)
    value = spec.btf.enumerators(t)[acc.idx].value
    if t.kind is Kind.ENUM:
        value &= 0xFFFFFFFF
        if value >= 1 << 31:
            value -= 1 << 32
    return value & _U64


def calc_relo(local: Spec, targ: Spec | None) -> Result:
    """bpf_core_calc_relo: the original (local) and new (target) values of one relocation."""
    res = Result()
    kind = local.kind
    try:
        if kind in _FIELD:
            _field_value(kind, local, res, True)
            _field_value(kind, targ, res, False)
            # Changing a load/store's size is safe for a pointer (32-bit kernels) or an unsigned
            # integer (zero-extended); any other size change poisons a memory access.
            if res.orig_sz != res.new_sz and targ is not None:
                ot, nt = local.btf.type(res.orig_type_id), targ.btf.type(res.new_type_id)
                both_ptr = ot.kind is Kind.PTR and nt.kind is Kind.PTR
                both_unsigned = (
                    ot.kind is Kind.INT
                    and nt.kind is Kind.INT
                    and not local.btf.int_encoding(ot).signed
                    and not targ.btf.int_encoding(nt).signed
                )
                res.fail_memsz_adjust = not (both_ptr or both_unsigned)
        elif kind in _TYPE:
            res.orig_val = _type_value(kind, local, res, True)
            res.new_val = _type_value(kind, targ, res, False)
        else:
            res.orig_val = _enumval_value(kind, local)
            res.new_val = _enumval_value(kind, targ)
    except _Poison:
        res.poison = True
    return res


class Resolver:
    """Resolves one program's relocations; candidates are cached per local type and narrowed to
    those that matched, as libbpf's cand_cache is."""

    def __init__(self, local: Btf, target: KernelBtf) -> None:
        self.local = local
        self.target = target
        self._cands: dict[int, list[tuple[Btf, int]]] = {}

    def candidates(self, local_id: int) -> list[tuple[Btf, int]]:
        """bpf_core_find_cands: target types of the same kind and essential name, vmlinux first;
        modules only if vmlinux has none (and never with --btf)."""
        if local_id in self._cands:
            return self._cands[local_id]
        lt = self.local.type(local_id)
        name = essential_name(self.local.name(lt))

        def same(btf: Btf, type_id: int) -> bool:
            t = btf.type(type_id)
            return t.kind is lt.kind and essential_name(btf.name(t)) == name

        cands = _search(self.target.vmlinux, name, same)
        if not cands:
            for module in self.target.modules().values():
                cands.extend(_search(module, name, same, own_only=True))
        self._cands[local_id] = cands
        return cands

    def resolve(self, relo: CoreRelocation) -> tuple[Result, Spec]:
        """bpf_core_calc_relo_insn."""
        local = parse_spec(self.local, relo.type_id, relo.access, relo.kind)
        if relo.kind is CoreKind.TYPE_ID_LOCAL:
            return Result(local.root_type_id, local.root_type_id, validate=False), local
        lt = self.local.type(relo.type_id)
        if not self.local.name(lt):
            raise CoreError(f"CO-RE relocation on an anonymous {lt.kind.name.lower()}: candidate search needs a name")
        cands = self.candidates(relo.type_id)
        chosen: Result | None = None
        chosen_spec: Spec | None = None
        kept: list[tuple[Btf, int]] = []
        for btf, cand_id in cands:
            targ = match_spec(local, btf, cand_id)
            if targ is None:
                continue
            res = calc_relo(local, targ)
            if chosen is None or chosen_spec is None:
                chosen, chosen_spec = res, targ
            elif targ.bit_offset != chosen_spec.bit_offset:
                raise CoreError(
                    f"CO-RE {describe(local)}: field offset ambiguity between kernel types "
                    f"#{chosen_spec.root_type_id} and #{cand_id} ({chosen_spec.bit_offset} != {targ.bit_offset} bits)"
                )
            elif res.poison != chosen.poison or res.new_val != chosen.new_val:
                raise CoreError(
                    f"CO-RE {describe(local)}: relocation decision ambiguity between kernel types "
                    f"#{chosen_spec.root_type_id} and #{cand_id} ({chosen.new_val} != {res.new_val})"
                )
            kept.append((btf, cand_id))
        if kept:
            self._cands[relo.type_id] = kept
        if chosen is None:
            chosen = calc_relo(local, None)
        return chosen, local

    def why_unresolved(self, relo: CoreRelocation, local: Spec) -> str:
        """The user's reason a relocation matched nothing: the type or the first missing field."""
        lt = self.local.type(local.root_type_id)
        what = f"{lt.kind.name.lower()} {self.local.name(lt)}"
        cands = self.candidates(relo.type_id)
        if not cands:
            return f"{what}: not in the kernel's BTF"
        if local.kind in _ENUMVAL:
            return f"{what}: no value {local.accessors[0].name} in the kernel's BTF"
        if local.kind in _FIELD:
            for upto in range(2, len(local.accessors) + 1):
                if not any(match_spec(local, btf, cid, upto) for btf, cid in cands):
                    acc = local.accessors[upto - 1]
                    parent = self.local.type(acc.type_id)
                    owner = f"{parent.kind.name.lower()} {self.local.name(parent) or '(anonymous)'}"
                    if acc.name:
                        return f"{owner}: no field {acc.name} in the kernel's BTF"
                    return f"{owner}: index {acc.idx} out of range in the kernel's BTF"
        return f"{what}: does not match the kernel's BTF ({describe(local)})"


def _search(btf: Btf, name: str, same: Callable[[Btf, int], bool], own_only: bool = False) -> list[tuple[Btf, int]]:
    """Types of ``btf`` named ``name`` or ``name___<flavour>`` that ``same`` accepts."""
    ids = btf.by_name(name) if own_only else btf.find(name)
    found = [(btf, i) for i in ids if same(btf, i)]
    for flavoured in btf.flavours(name, own_only=own_only):
        found.extend((btf, i) for i in flavoured if same(btf, i))
    return sorted(set(found), key=lambda c: c[1])


def describe(spec: Spec) -> str:
    """``struct sk_buff.len (0:1)``-like text of a local spec, for messages."""
    btf = spec.btf
    t = btf.type(spec.root_type_id)
    path = "".join(f".{a.name}" if a.name else f"[{a.idx}]" for a in spec.accessors[1:])
    if spec.kind in _ENUMVAL and spec.accessors:
        path = f"::{spec.accessors[0].name}"
    return f"{spec.kind.name} {t.kind.name.lower()} {btf.name(t)}{path}"


# -- patching ----------------------------------------------------------------------------------------
def poison(buf: bytearray, insn: int) -> None:
    """bpf_core_poison_insn: ``call 0xbad2310``; an ld_imm64's second half too."""
    off = insn * INSN_SIZE
    if buf[off] == LD_IMM64 and off + 2 * INSN_SIZE <= len(buf):
        struct.pack_into("<BBhi", buf, off + INSN_SIZE, CALL, 0, 0, POISON_IMM)
    struct.pack_into("<BBhi", buf, off, CALL, 0, 0, POISON_IMM)


def patch(buf: bytearray, insn: int, res: Result, where: str) -> bool:
    """bpf_core_patch_insn; returns False when the instruction was poisoned."""
    off = insn * INSN_SIZE
    if off + INSN_SIZE > len(buf):
        raise CoreError(f"{where}: instruction #{insn} is beyond the program")
    if res.poison:
        poison(buf, insn)
        return False
    code, _regs, ins_off, imm = struct.unpack_from("<BBhi", buf, off)
    cls = code & 0x07
    orig, new = res.orig_val, res.new_val
    if cls in (_CLASS_ALU, _CLASS_ALU64):
        if code & 0x08:  # BPF_X: no immediate to patch
            raise CoreError(f"{where}: instruction #{insn} (ALU) has no immediate operand")
        if res.validate and imm & _U64 != orig & _U64:
            raise CoreError(f"{where}: unexpected instruction #{insn} (ALU) value: got {imm}, expected {orig} -> {new}")
        struct.pack_into("<i", buf, off + 4, _s32(new))
    elif cls in (_CLASS_LDX, _CLASS_ST, _CLASS_STX):
        if res.validate and ins_off != orig:
            raise CoreError(
                f"{where}: unexpected instruction #{insn} (LDX/ST/STX) offset: got {ins_off}, expected {orig}"
            )
        if new > 0x7FFF:
            raise CoreError(f"{where}: instruction #{insn} (LDX/ST/STX) offset {new} too big")
        if res.fail_memsz_adjust:
            # libbpf: the field's size differs and it is neither a pointer nor an unsigned integer
            poison(buf, insn)
            return False
        struct.pack_into("<h", buf, off + 2, new)
        if res.new_sz != res.orig_sz:
            size = code & 0x18
            if _SIZE_BYTES[size] != res.orig_sz:
                raise CoreError(
                    f"{where}: instruction #{insn} (LDX/ST/STX) accesses {_SIZE_BYTES[size]} bytes, "
                    f"expected {res.orig_sz}"
                )
            if res.new_sz not in _BYTES_SIZE:
                raise CoreError(f"{where}: instruction #{insn} (LDX/ST/STX): invalid new access size {res.new_sz}")
            buf[off] = (code & ~0x18 & 0xFF) | _BYTES_SIZE[res.new_sz]
    elif cls == _CLASS_LD:
        if code != LD_IMM64 or off + 2 * INSN_SIZE > len(buf):
            raise CoreError(f"{where}: instruction #{insn} (LD) is not an ld_imm64")
        code2, regs2, off2, imm2 = struct.unpack_from("<BBhi", buf, off + INSN_SIZE)
        if _regs >> 4 or ins_off or code2 or regs2 or off2:
            raise CoreError(f"{where}: instruction #{insn} (LDIMM64) has unexpected form")
        value = (imm & 0xFFFFFFFF) | ((imm2 & 0xFFFFFFFF) << 32)
        if res.validate and value != orig & _U64:
            raise CoreError(f"{where}: unexpected instruction #{insn} (LDIMM64) value: got {value}, expected {orig}")
        struct.pack_into("<i", buf, off + 4, _s32(new))
        struct.pack_into("<i", buf, off + INSN_SIZE + 4, _s32(new >> 32))
    else:
        raise CoreError(f"{where}: cannot relocate instruction #{insn} (opcode {code:#04x})")
    return True


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def apply(
    program: str, instructions: bytes, relocations: Sequence[CoreRelocation], local: Btf, target: KernelBtf
) -> tuple[bytes, list[Poisoned]]:
    """The instructions with every CO-RE relocation applied, and the instructions poisoned."""
    buf = bytearray(instructions)
    resolver = Resolver(local, target)
    poisoned: list[Poisoned] = []
    for number, relo in enumerate(relocations):
        where = f"program {program!r}: CO-RE relocation #{number}"
        try:
            res, spec = resolver.resolve(relo)
            where = f"{where} ({describe(spec)})"
            if not patch(buf, relo.insn, res, where):
                reason = (
                    resolver.why_unresolved(relo, spec)
                    if res.poison
                    else f"{describe(spec)}: the field's size differs in the kernel and it is "
                    "not an unsigned integer or pointer"
                )
                poisoned.append(Poisoned(relo.insn, reason))
        except ObjectError as exc:
            if str(exc).startswith(where):
                raise
            raise type(exc)(f"{where}: {exc}") from None
    return bytes(buf), poisoned
