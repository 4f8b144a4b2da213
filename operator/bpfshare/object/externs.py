"""Externs: undefined symbols the object declares ``__kconfig`` or ``__ksym`` (pure data).

libbpf's bpf_object__collect_externs: every undefined global or weak symbol is an extern; the
object's BTF tells what it is, by the VAR or FUNC of that name with extern linkage and the DATASEC
holding it: ``.kconfig`` (a Kconfig value, laid out in the ``.kconfig`` map) or ``.ksyms`` (a kernel
variable or function, resolved at load time). An undefined function in neither is an extern
function only static linking resolves (``bpftool gen object``); bpfshare reports it as such.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object.btf import Btf, BtfType, Kind
from bpfshare.object.elf import SHN_UNDEF, STB_GLOBAL, STB_WEAK, STT_FILE, STT_FUNC, STT_SECTION, ElfObject
from bpfshare.spec import KconfigExtern, KconfigType

KCONFIG_SEC = ".kconfig"
KSYMS_SEC = ".ksyms"
BTF_VAR_GLOBAL_EXTERN = 2
BTF_FUNC_EXTERN = 2
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class Extern:
    name: str
    section: str  # KCONFIG_SEC, KSYMS_SEC, or "" (no DATASEC: an extern for the static linker)
    is_func: bool
    weak: bool
    typed: bool  # __ksym: has a type (a FUNC, or a VAR of non-void type)
    kconfig: KconfigExtern | None = None
    proto: str = ""  # a typed __ksym's type (a function's prototype), as ``type_shape`` writes it


_SHAPE_DEPTH = 32  # libbpf's __bpf_core_types_are_compat recursion limit


def type_shape(btf: Btf, type_id: int, depth: int = _SHAPE_DEPTH) -> str:
    """A type as libbpf's bpf_core_types_are_compat compares it, written out: two types are
    compatible when their shapes are equal. Modifiers and typedefs are skipped; structs, unions,
    forward declarations and enums match by kind alone (enum and enum64 alike), integers all
    match, pointers and arrays by what they point at or hold, function prototypes by the
    number and shapes of their parameters and their return type."""
    if depth <= 0:
        return "?"
    t = btf.skip_mods(type_id)
    kind = t.kind
    if kind is Kind.UNKN:
        return "void"
    if kind in (Kind.ENUM, Kind.ENUM64):
        return "enum"
    if kind is Kind.PTR:
        return "*" + type_shape(btf, t.size_or_type, depth - 1)
    if kind is Kind.ARRAY:
        return "[]" + type_shape(btf, btf.array(t)[0], depth - 1)
    if kind is Kind.FUNC_PROTO:
        args = ",".join(type_shape(btf, param.type, depth - 1) for param in btf.params(t))
        return f"({args})" + type_shape(btf, t.size_or_type, depth - 1)
    return kind.name.lower()


def has_externs(elf: ElfObject) -> bool:
    """Whether the object has any extern symbol at all (so BTF is read only when needed)."""
    return any(_is_extern(s.shndx, s.bind, s.type, s.name) for s in elf.symbols[1:])


def _is_extern(shndx: int, bind: int, typ: int, name: str) -> bool:
    # libbpf's sym_is_extern: undefined, global or weak, and not a section or file symbol.
    return shndx == SHN_UNDEF and bind in (STB_GLOBAL, STB_WEAK) and typ not in (STT_SECTION, STT_FILE) and bool(name)


def var_linkage(btf: Btf, t: BtfType) -> int:
    (linkage,) = _U32.unpack_from(btf.types_data, t.extra)
    return int(linkage)


def _kcfg_type(btf: Btf, type_id: int) -> tuple[KconfigType | None, bool]:
    """libbpf's find_kcfg_type: (type, signed), type None when unsupported."""
    t = btf.skip_mods(type_id)
    if t.kind is Kind.INT:
        enc = btf.int_encoding(t)
        if enc.bool:
            return (KconfigType.BOOL if t.size_or_type == 1 else None), False
        signed = enc.signed
        if t.size_or_type == 1:
            return KconfigType.CHAR, signed
        size = t.size_or_type
        if size < 1 or size > 8 or size & (size - 1):
            return None, signed
        return KconfigType.INT, signed
    if t.kind in (Kind.ENUM, Kind.ENUM64):
        if btf.name(t) != "libbpf_tristate" or (t.kind is Kind.ENUM and t.size_or_type != 4):
            return None, False
        return KconfigType.TRISTATE, False
    if t.kind is Kind.ARRAY:
        # Of chars only (an element that is itself an array is not a char: one level suffices,
        # and a cyclic array type cannot recurse).
        elem_id, _index, nelems = btf.array(t)
        elem = btf.skip_mods(elem_id)
        if nelems == 0 or elem.kind is not Kind.INT or elem.size_or_type != 1 or btf.int_encoding(elem).bool:
            return None, False
        return KconfigType.CHAR_ARRAY, False
    return None, False


def _align(btf: Btf, type_id: int) -> int:
    """libbpf's btf__align_of for the types a Kconfig value may have."""
    t = btf.skip_mods(type_id)
    if t.kind is Kind.ARRAY:  # of chars (checked by _kcfg_type)
        t = btf.skip_mods(btf.array(t)[0])
    return min(t.size_or_type, 8)


def collect_externs(elf: ElfObject, btf: Btf) -> tuple[dict[str, Extern], int]:
    """Every extern of the object, by name, and the size of the ``.kconfig`` map (0: none)."""
    # The BTF VAR/FUNC with extern linkage of each name (libbpf's find_extern_btf_id), and the
    # DATASEC holding each type id (find_extern_sec_btf_id).
    declared: dict[str, BtfType] = {}
    datasec_of: dict[int, str] = {}
    for t in btf.types:
        extern_var = t.kind is Kind.VAR and var_linkage(btf, t) == BTF_VAR_GLOBAL_EXTERN
        if extern_var or (t.kind is Kind.FUNC and t.vlen == BTF_FUNC_EXTERN):
            declared.setdefault(btf.name(t), t)
        elif t.kind is Kind.DATASEC and (name := btf.name(t)) in (KCONFIG_SEC, KSYMS_SEC):
            for info in btf.secinfo(t):
                datasec_of[info.type] = name
    out: dict[str, Extern] = {}
    kcfg: list[tuple[int, int, str, KconfigType, bool, bool]] = []  # align, size, name, type, signed, weak
    for sym in elf.symbols[1:]:
        if not _is_extern(sym.shndx, sym.bind, sym.type, sym.name) or sym.name in out:
            continue
        weak = sym.bind == STB_WEAK
        found = declared.get(sym.name)
        if found is None:
            # No BTF declaration: a function or variable another object defines.
            out[sym.name] = Extern(sym.name, "", sym.type == STT_FUNC, weak, False)
            continue
        t = found
        section = datasec_of.get(t.id, "")
        is_func = t.kind is Kind.FUNC
        if section == KCONFIG_SEC:
            if is_func:
                raise ObjectError(f"extern {sym.name!r}: a function in section {KCONFIG_SEC}")
            kind, signed = _kcfg_type(btf, t.size_or_type)
            if kind is None:
                raise UnsupportedError(
                    f"unsupported: extern (kconfig) {sym.name!r}: type {btf.describe(btf.skip_mods(t.size_or_type))} "
                    "is not bool, char, tristate, an integer or a char array"
                )
            kcfg.append((_align(btf, t.size_or_type), btf.size(t.size_or_type), sym.name, kind, signed, weak))
            continue
        typed = is_func or btf.skip_mods(t.size_or_type).kind is not Kind.UNKN
        proto = type_shape(btf, t.size_or_type) if typed and section == KSYMS_SEC else ""
        out[sym.name] = Extern(sym.name, section, is_func, weak, typed, proto=proto)
    # libbpf's cmp_externs: by descending alignment, then ascending size, then name; then packed.
    kcfg.sort(key=lambda e: (-e[0], e[1], e[2]))
    offset = 0
    for align, size, name, kind, signed, weak in kcfg:
        offset = (offset + align - 1) // align * align
        spec = KconfigExtern(name=name, offset=offset, size=size, type=kind, signed=signed, weak=weak)
        out[name] = Extern(name, KCONFIG_SEC, False, weak, True, spec)
        offset += size
    return out, (offset + 7) // 8 * 8
