"""The object's BTF made acceptable to BPF_BTF_LOAD (pure: bytes in, bytes out).

clang leaves what only a loader can know: DATASEC sizes and variable offsets are zero, and externs
are VARs and FUNCs with extern linkage, which the kernel refuses ("Linkage not supported", "Invalid
func linkage"). Fixed up as libbpf does:
- bpf_object__collect_externs: ``.ksyms`` variables become 4-byte allocated ``int`` VARs at offsets
  0, 4, 8...; ``.ksyms`` functions become global, their DATASEC entries point at a dummy ``int``
  VAR (``dummy_ksym``) whose name also fills their unnamed parameters; ``.kconfig`` variables
  become allocated, at their offset in the ``.kconfig`` map.
- btf_fixup_datasec: a DATASEC of size 0 takes its ELF section's size and each variable the
  offset of its ELF symbol; entries are sorted by offset.
Extern functions that no DATASEC holds (for the static linker) are made static: the kernel checks
nothing more of a FUNC that no func_info names. The kernel this targets (6.x) knows every BTF kind
clang emits, so libbpf's bpf_object__sanitize_btf (for older kernels) has nothing to do.
"""

from __future__ import annotations

from bpfshare.errors import UnsupportedError
from bpfshare.object.btf import _HEADER, _PARAM, _SECINFO, _TYPE, _U32, BTF_MAGIC, Btf, BtfType, Kind
from bpfshare.object.elf import STT_FUNC, STT_SECTION, ElfObject
from bpfshare.object.externs import BTF_FUNC_EXTERN, BTF_VAR_GLOBAL_EXTERN, KCONFIG_SEC, KSYMS_SEC
from bpfshare.spec import KconfigExtern

BTF_VAR_GLOBAL_ALLOCATED = 1
BTF_FUNC_STATIC = 0
BTF_FUNC_GLOBAL = 1
DUMMY_KSYM = "dummy_ksym"


def sanitize_btf(btf: Btf, elf: ElfObject, kconfig: dict[str, KconfigExtern], kconfig_size: int) -> bytes:
    """The BTF blob to load into the kernel for this object."""
    types = bytearray(btf.types_data)
    strings = bytearray(btf.strings)
    appended = bytearray()
    next_id = len(btf.types)

    def add_string(text: str) -> int:
        off = len(strings)
        strings.extend(text.encode() + b"\0")
        return off

    def set_info(t: BtfType, kind: Kind, vlen: int) -> None:
        pos = t.extra - _TYPE.size
        name_off, info, size_or_type = _TYPE.unpack_from(types, pos)
        info = (info & ~0x1F00FFFF) | (int(kind) << 24) | vlen
        _TYPE.pack_into(types, pos, name_off, info, size_or_type)

    # One pass over the types: externs made allocated (a .ksyms function becomes global below),
    # the DATASECs kept for after it, and libbpf's find_int_btf_id (the first 32-bit INT).
    int_id = 0
    extern_funcs: list[BtfType] = []
    datasecs: list[BtfType] = []
    for t in btf.types:
        if t.kind is Kind.FUNC and t.vlen == BTF_FUNC_EXTERN:
            set_info(t, Kind.FUNC, BTF_FUNC_STATIC)
            extern_funcs.append(t)
        elif t.kind is Kind.VAR and _U32.unpack_from(types, t.extra)[0] == BTF_VAR_GLOBAL_EXTERN:
            _U32.pack_into(types, t.extra, BTF_VAR_GLOBAL_ALLOCATED)
        elif t.kind is Kind.DATASEC:
            datasecs.append(t)
        elif not int_id and t.kind is Kind.INT and btf.int_encoding(t).bits == 32:
            int_id = t.id
    if not int_id:  # appended if the object has none
        int_id = next_id
        next_id += 1
        appended += _TYPE.pack(add_string("int"), int(Kind.INT) << 24, 4) + _U32.pack((1 << 24) | 32)
    dummy_id = 0
    dummy_name = 0

    # The kernel refuses a FUNC whose prototype has an unnamed parameter ("Invalid arg#1"), which a
    # declaration may have: named after the dummy variable, as libbpf does.
    for func in extern_funcs:
        proto = btf.type(func.size_or_type)
        for i in range(proto.vlen if proto.kind is Kind.FUNC_PROTO else 0):
            pos = proto.extra + i * _PARAM.size
            param_name, param_type = _PARAM.unpack_from(types, pos)
            if param_type and not param_name:
                dummy_name = dummy_name or add_string(DUMMY_KSYM)
                _PARAM.pack_into(types, pos, dummy_name, param_type)

    sym_offsets: dict[tuple[int, str], int] = {}
    for sym in elf.symbols[1:]:
        if sym.type not in (STT_SECTION, STT_FUNC) and sym.name:
            sym_offsets.setdefault((sym.shndx, sym.name), sym.value)

    for t in datasecs:
        name = btf.name(t)
        entries = [list(e) for e in _SECINFO.iter_unpack(types[t.extra : t.extra + t.vlen * _SECINFO.size])]
        size = t.size_or_type
        if name == KSYMS_SEC:
            for n, entry in enumerate(entries):
                vt = btf.type(entry[0])
                if vt.kind is Kind.FUNC:
                    if not dummy_id:  # libbpf's add_dummy_ksym_var
                        dummy_id = next_id
                        next_id += 1
                        dummy_name = dummy_name or add_string(DUMMY_KSYM)
                        appended += _TYPE.pack(dummy_name, int(Kind.VAR) << 24, int_id)
                        appended += _U32.pack(BTF_VAR_GLOBAL_ALLOCATED)
                    set_info(vt, Kind.FUNC, BTF_FUNC_GLOBAL)
                    entry[0] = dummy_id
                else:
                    _U32.pack_into(types, vt.extra - 4, int_id)  # its size_or_type: an int
                entry[1], entry[2] = 4 * n, 4
            size = 4 * len(entries)
        elif name == KCONFIG_SEC:
            for entry in entries:
                ext = kconfig.get(btf.name(btf.type(entry[0])))
                if ext is not None:
                    entry[1] = ext.offset
            size = size or kconfig_size
        else:
            sec = elf.by_name.get(name)
            if size == 0:
                if sec is None or sec.size == 0:
                    raise UnsupportedError(
                        f"unsupported: BTF DATASEC {name!r}: no ELF section gives its size "
                        "(needed to load the object's BTF)"
                    )
                size = sec.size
                for entry in entries:
                    var = btf.type(entry[0])
                    if var.kind is Kind.VAR:
                        entry[1] = sym_offsets.get((sec.index, btf.name(var)), entry[1])
        entries.sort(key=lambda e: e[1])
        for n, entry in enumerate(entries):
            _SECINFO.pack_into(types, t.extra + n * _SECINFO.size, *entry)
        _U32.pack_into(types, t.extra - 4, size)

    types += appended
    header = _HEADER.pack(BTF_MAGIC, 1, 0, _HEADER.size, 0, len(types), len(types), len(strings))
    return header + bytes(types) + bytes(strings)
