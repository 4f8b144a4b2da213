"""CO-RE type and field compatibility, as libbpf's relo_core.c decides it.

``fields_are_compat`` (bpf_core_fields_are_compat), ``types_are_compat``
(__bpf_core_types_are_compat) and ``types_match`` (__bpf_core_types_match) compare a type of the
object's BTF ("local") with one of the kernel's ("target"); ``essential_name`` strips a
``___flavour`` suffix (bpf_core_essential_name_len). Like libbpf, they return False rather than
raise for types that merely differ; a cycle deeper than libbpf's limit is an error.
"""

from __future__ import annotations

from bpfshare.errors import ObjectError
from bpfshare.object.btf import Btf, BtfType, Kind, essential_name

MAX_DEPTH = 32  # libbpf's recursion depth for type comparisons
_ENUMS = frozenset({Kind.ENUM, Kind.ENUM64})
_COMPOSITE = frozenset({Kind.STRUCT, Kind.UNION})
__all__ = ["essential_name", "fields_are_compat", "types_are_compat", "types_match"]


def _kind_compat(a: BtfType, b: BtfType) -> bool:
    """btf_kind_core_compat: same kind, or ENUM against ENUM64."""
    return a.kind is b.kind or (a.kind in _ENUMS and b.kind in _ENUMS)


def _skip(btf: Btf, type_id: int) -> BtfType:
    return btf.skip_mods(type_id)


def _names_match(local: Btf, local_off: int, targ: Btf, targ_off: int) -> bool:
    """bpf_core_names_match: an anonymous local matches anything; else essential names equal."""
    local_name = local.string(local_off)
    if not local_name:
        return True
    return essential_name(local_name) == essential_name(targ.string(targ_off))


def fields_are_compat(local: Btf, local_id: int, targ: Btf, targ_id: int) -> bool:
    """bpf_core_fields_are_compat: may the target field stand for the local one?"""
    for _ in range(MAX_DEPTH):
        lt, tt = _skip(local, local_id), _skip(targ, targ_id)
        if lt.kind in _COMPOSITE and tt.kind in _COMPOSITE:
            return True
        if not _kind_compat(lt, tt):
            return False
        if lt.kind in (Kind.PTR, Kind.FLOAT):
            return True
        if lt.kind in (Kind.FWD, Kind.ENUM, Kind.ENUM64):
            ln, tn = essential_name(local.name(lt)), essential_name(targ.name(tt))
            return not ln or not tn or ln == tn
        if lt.kind is Kind.INT:
            # deprecated bitfield-like integers are rejected; all others are compatible
            return local.int_encoding(lt).offset == 0 and targ.int_encoding(tt).offset == 0
        if lt.kind is Kind.ARRAY:
            local_id, targ_id = local.array(lt)[0], targ.array(tt)[0]
            continue
        return False
    raise ObjectError(f"{local.where}: type chain from #{local_id} is too deep")


def types_are_compat(local: Btf, local_id: int, targ: Btf, targ_id: int, level: int = MAX_DEPTH) -> bool:
    """__bpf_core_types_are_compat: the rule of TYPE_ID_TARGET, TYPE_EXISTS and TYPE_SIZE."""
    if level <= 0:
        raise ObjectError(f"{local.where}: type #{local_id} nests too deeply")
    if not _kind_compat(local.type(local_id), targ.type(targ_id)):
        return False
    for _ in range(MAX_DEPTH):
        lt, tt = _skip(local, local_id), _skip(targ, targ_id)
        if not _kind_compat(lt, tt):
            return False
        if lt.kind in (Kind.UNKN, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.FWD, Kind.ENUM64):
            return True
        if lt.kind is Kind.INT:
            return local.int_encoding(lt).offset == 0 and targ.int_encoding(tt).offset == 0
        if lt.kind is Kind.PTR:
            local_id, targ_id = lt.size_or_type, tt.size_or_type
        elif lt.kind is Kind.ARRAY:
            local_id, targ_id = local.array(lt)[0], targ.array(tt)[0]
        elif lt.kind is Kind.FUNC_PROTO:
            lp, tp = local.params(lt), targ.params(tt)
            if len(lp) != len(tp):
                return False
            for a, b in zip(lp, tp, strict=True):
                if not types_are_compat(local, _skip(local, a.type).id, targ, _skip(targ, b.type).id, level - 1):
                    return False
            local_id, targ_id = _skip(local, lt.size_or_type).id, _skip(targ, tt.size_or_type).id
        else:
            return False
    raise ObjectError(f"{local.where}: type chain from #{local_id} is too deep")


def types_match(
    local: Btf, local_id: int, targ: Btf, targ_id: int, behind_ptr: bool = False, level: int = MAX_DEPTH
) -> bool:
    """__bpf_core_types_match: the stricter rule of TYPE_MATCHES (bpf_core_type_matches)."""
    if level <= 0:
        raise ObjectError(f"{local.where}: type #{local_id} nests too deeply")
    for _ in range(MAX_DEPTH):
        lt, tt = _skip(local, local_id), _skip(targ, targ_id)
        if not _names_match(local, lt.name_off, targ, tt.name_off):
            return False
        lk, tk = lt.kind, tt.kind
        if lk is Kind.UNKN:
            return lk is tk
        if lk is Kind.FWD:
            if tk is Kind.FWD:
                return lt.kind_flag == tt.kind_flag
            return tk is (Kind.UNION if lt.kind_flag else Kind.STRUCT)
        if lk in _ENUMS:
            return tk in _ENUMS and _enums_match(local, lt, targ, tt)
        if lk in _COMPOSITE:
            if behind_ptr:
                if lk is tk:
                    return True
                return tk is Kind.FWD and (lk is Kind.UNION) == tt.kind_flag
            return lk is tk and _composites_match(local, lt, targ, tt, behind_ptr, level)
        if lk is Kind.INT:
            if tk is not lk:
                return False
            return lt.size_or_type == tt.size_or_type and local.int_encoding(lt).signed == targ.int_encoding(tt).signed
        if lk is Kind.PTR:
            if tk is not lk:
                return False
            behind_ptr = True
            local_id, targ_id = lt.size_or_type, tt.size_or_type
        elif lk is Kind.ARRAY:
            if tk is not lk:
                return False
            la, ta = local.array(lt), targ.array(tt)
            if la[2] != ta[2]:
                return False
            local_id, targ_id = la[0], ta[0]
        elif lk is Kind.FUNC_PROTO:
            if tk is not lk:
                return False
            lp, tp = local.params(lt), targ.params(tt)
            if len(lp) != len(tp):
                return False
            for a, b in zip(lp, tp, strict=True):
                if not types_match(local, a.type, targ, b.type, behind_ptr, level - 1):
                    return False
            local_id, targ_id = lt.size_or_type, tt.size_or_type
        else:
            return False
    raise ObjectError(f"{local.where}: type chain from #{local_id} is too deep")


def _enums_match(local: Btf, lt: BtfType, targ: Btf, tt: BtfType) -> bool:
    """bpf_core_enums_match: same size, every local enumerator named in the target."""
    if lt.size_or_type != tt.size_or_type or lt.vlen > tt.vlen:
        return False
    targ_names = {essential_name(e.name) for e in targ.enumerators(tt)}
    return all(not e.name or essential_name(e.name) in targ_names for e in local.enumerators(lt))


def _composites_match(local: Btf, lt: BtfType, targ: Btf, tt: BtfType, behind_ptr: bool, level: int) -> bool:
    """bpf_core_composites_match: every local member has a target member of matching name and type."""
    if lt.vlen > tt.vlen:
        return False
    targ_members = targ.members(tt)
    for lm in local.members(lt):
        for tm in targ_members:
            same_name = not lm.name or essential_name(lm.name) == essential_name(tm.name)
            if same_name and types_match(local, lm.type, targ, tm.type, behind_ptr, level - 1):
                break
        else:
            return False
    return True
