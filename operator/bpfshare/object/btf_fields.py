"""What a map value holds that the kernel knows only from the map's BTF.

The kernel finds these fields in the value's BTF type when the map is created (kernel/bpf/btf.c
btf_parse_fields, btf_get_field_type and btf_find_kptr): structs it recognises by name (a
``struct bpf_timer``, ``bpf_spin_lock``...) and pointers tagged ``__kptr``. A map holding one works
only if it was created with its BTF: the verifier refuses a program using the field otherwise
("map 'x' has to have BTF in order to use bpf_timer"). The walk follows the kernel's: members of
the value, nested structs and unions, arrays of either.
"""

from __future__ import annotations

from bpfshare.object.btf import Btf, Kind

# btf_get_field_type: the structs the kernel treats as special fields of a map value.
SPECIAL_STRUCTS = frozenset(
    {
        "bpf_spin_lock",
        "bpf_res_spin_lock",
        "bpf_timer",
        "bpf_wq",
        "bpf_task_work",
        "bpf_list_head",
        "bpf_list_node",
        "bpf_rb_root",
        "bpf_rb_node",
        "bpf_refcount",
    }
)
# btf_find_kptr: a pointer whose target is a TYPE_TAG of one of these names.
KPTR_TAGS = frozenset({"kptr", "kptr_untrusted", "percpu_kptr", "uptr"})
_MAX_DEPTH = 32  # deeper nesting is not a real value type (the kernel stops far earlier)


def btf_fields(btf: Btf, type_id: int) -> tuple[str, ...]:
    """The special fields of the value type ``type_id``, e.g. ``("struct bpf_timer at offset 8",)``;
    empty for a value the kernel needs no BTF for."""
    out: list[str] = []
    _walk(btf, type_id, 0, out, 0)
    return tuple(out)


def _walk(btf: Btf, type_id: int, offset: int, out: list[str], depth: int) -> None:
    t = btf.skip_mods(type_id)
    if depth > _MAX_DEPTH:
        return
    if t.kind is Kind.ARRAY:
        elem, _, nelems = btf.array(t)
        if nelems:  # the kernel reports an array of fields once per element; its first names it
            _walk(btf, elem, offset, out, depth + 1)
        return
    if t.kind not in (Kind.STRUCT, Kind.UNION):
        return
    for member in btf.members(t):
        where = offset + member.offset // 8
        target = btf.skip_mods(member.type)
        if target.kind is Kind.STRUCT and btf.name(target) in SPECIAL_STRUCTS:
            out.append(f"struct {btf.name(target)} at offset {where}")
        elif target.kind is Kind.PTR and (tag := _kptr_tag(btf, member.type)):
            out.append(f"a {tag} pointer at offset {where}")
        else:
            _walk(btf, member.type, where, out, depth + 1)


def _kptr_tag(btf: Btf, type_id: int) -> str:
    """The tag of a ``__kptr``-style pointer member (``T __tag *p``: PTR -> TYPE_TAG -> T), or ''."""
    ptr = btf.skip_mods(type_id)
    tag = btf.type(ptr.size_or_type)
    if tag.kind is Kind.TYPE_TAG and btf.name(tag) in KPTR_TAGS:
        return btf.name(tag)
    return ""
