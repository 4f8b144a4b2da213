"""BTF-defined maps: the variables of the ``.maps`` section, decoded like libbpf's parse_btf_map_def.

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);   // int (*type)[2]: a pointer to an array of 2 elements
    __uint(max_entries, 4);
    __type(key, __u32);                 // __u32 *key: the key size is sizeof(__u32)
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
    __array(values, struct inner);      // map-in-map: struct inner *values[]
} shared_counts SEC(".maps");
"""

from __future__ import annotations

from dataclasses import dataclass

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object.btf import Btf, BtfType, Kind
from bpfshare.object.btf_fields import btf_fields
from bpfshare.object.mapdef import map_type
from bpfshare.spec import DefinitionStyle, MapSpec, Pinning
from bpfshare.types import MAP_IN_MAP_TYPES, MapFlag, MapType

# Map types whose __type(key/value, T) documents records rather than sizing the map.
_TYPE_ONLY_DOCUMENTS = (MapType.RingBuf, MapType.UserRingBuf, MapType.PerfEventArray)
LIBBPF_PIN_NONE = 0
LIBBPF_PIN_BY_NAME = 1
_INT_FIELDS = (
    "type",
    "max_entries",
    "map_flags",
    "numa_node",
    "key_size",
    "value_size",
    "pinning",
    "map_extra",
)


@dataclass(frozen=True)
class BtfMap:
    """One variable of the ``.maps`` DATASEC: its spec, or why its definition cannot be loaded.

    ``values_offset`` is the byte offset of a trailing ``values`` member (``__array(values, ...)``)
    in the definition, where the initial slots' relocations land (libbpf's
    bpf_object__collect_map_relos requires it to be the last member); None without one.
    """

    name: str
    spec: MapSpec | None
    error: ObjectError | None = None
    values_offset: int | None = None


def btf_maps(btf: Btf, section: str) -> list[BtfMap]:
    """Every map variable of the ``section`` DATASEC, in DATASEC order.

    A definition bpfshare cannot take (or a malformed one) refuses that map only: its entry carries
    the error, so that the programs that do not use it can still load. A section without a DATASEC,
    or a DATASEC entry that is not a variable, is malformed as a whole (no map can be named).

    clang leaves the DATASEC's offsets at zero (libbpf fills them in from the symbol table), so
    where each map lies in the section is the caller's business: its symbol's value.
    """
    datasec = btf.datasec(section)
    if datasec is None:
        raise ObjectError(f"section {section}: no BTF DATASEC describes it (compiled without -g?)")
    out = []
    for info in btf.secinfo(datasec):
        var = btf.type(info.type)
        if var.kind is not Kind.VAR:
            raise ObjectError(f"section {section}: {btf.describe(var)} in its DATASEC is not a variable")
        name = btf.name(var)
        try:
            spec = _parse(btf, name, var.size_or_type, section, inner_of=None)
        except ObjectError as exc:
            out.append(BtfMap(name, None, exc))
            continue
        out.append(BtfMap(name, spec, None, _values_offset(btf, var.size_or_type)))
    return out


def _values_offset(btf: Btf, type_id: int) -> int | None:
    members = btf.members(btf.skip_mods(type_id))
    if not members or members[-1].name != "values":
        return None
    return members[-1].offset // 8  # a bit offset (Btf.members unpacks a kind_flag struct's)


def _int_field(btf: Btf, member_type: int, where: str) -> int:
    """``__uint(name, val)`` is ``int (*name)[val]``: the value is the array's element count."""
    ptr = btf.skip_mods(member_type)
    if ptr.kind is not Kind.PTR:
        raise ObjectError(f"{where}: expected a pointer (__uint), got {btf.describe(ptr)}")
    arr = btf.skip_mods(ptr.size_or_type)
    if arr.kind is not Kind.ARRAY:
        raise ObjectError(f"{where}: expected a pointer to an array (__uint), got a pointer to {btf.describe(arr)}")
    return btf.array(arr)[2]


def _parse(btf: Btf, name: str, type_id: int, section: str, inner_of: str | None) -> MapSpec:
    where = f"map {name!r}" if inner_of is None else f"inner map of {inner_of!r}"
    definition = btf.skip_mods(type_id)
    if definition.kind is not Kind.STRUCT:
        raise ObjectError(f"{where}: definition is {btf.describe(definition)}, not a struct")
    ints: dict[str, int] = {}
    key_type_size: int | None = None
    value_type_size: int | None = None
    # libbpf's parse_btf_map_def keeps the pointer's target as the type id (map->btf_key_type_id).
    key_type_id = value_type_id = 0
    values: BtfType | None = None
    for member in btf.members(definition):
        field = f"{where} field {member.name!r}"
        if member.name in _INT_FIELDS:
            ints[member.name] = _int_field(btf, member.type, field)
        elif member.name in ("key", "value"):
            ptr = btf.skip_mods(member.type)
            if ptr.kind is not Kind.PTR:
                raise ObjectError(f"{field}: expected a pointer (__type), got {btf.describe(ptr)}")
            size = btf.size(ptr.size_or_type)
            if member.name == "key":
                key_type_size, key_type_id = size, ptr.size_or_type
            else:
                value_type_size, value_type_id = size, ptr.size_or_type
        elif member.name == "values":
            values = btf.skip_mods(member.type)
        else:
            raise UnsupportedError(f"unsupported: {where}: unknown field {member.name!r}")

    mtype = map_type(ints.get("type", 0), where)
    if mtype in _TYPE_ONLY_DOCUMENTS:
        # A ring buffer's or perf event array's ``__type(key/value, T)`` names the record type
        # for readers (BTF), not a size: libbpf creates them with 0 (the kernel fills a perf event
        # array's 4 in, and refuses anything but 0 for a ring buffer), so only explicit
        # key_size/value_size count here, and effective_spec fills in the rest.
        key_type_size = value_type_size = None
        key_type_id = value_type_id = 0  # nor BTF for the map (its sizes are not the types')
    key_size = _size(ints.get("key_size"), key_type_size, f"{where} key")
    value_size = _size(ints.get("value_size"), value_type_size, f"{where} value")
    inner: MapSpec | None = None
    if values is not None:
        inner, value_size = _values(btf, name, mtype, values, value_size, section, where, inner_of)

    pin_value = ints.get("pinning", LIBBPF_PIN_NONE)
    if pin_value not in (LIBBPF_PIN_NONE, LIBBPF_PIN_BY_NAME):
        raise ObjectError(f"{where}: invalid pinning {pin_value} (libbpf knows 0 = none, 1 = by name)")
    extra = tuple((k, ints[k]) for k in ("numa_node", "map_extra") if ints.get(k))
    return MapSpec(
        name=name if inner_of is None else f"{inner_of}.inner",
        type=mtype,
        key_size=key_size,
        value_size=value_size,
        max_entries=ints.get("max_entries", 0),
        flags=MapFlag(ints.get("map_flags", 0)),
        pinning=Pinning.ByName if pin_value == LIBBPF_PIN_BY_NAME else Pinning.NONE,
        style=DefinitionStyle.BTF,
        section=section,
        inner=inner,
        extra=extra,
        btf_key_type_id=key_type_id,
        btf_value_type_id=value_type_id,
        btf_fields=btf_fields(btf, value_type_id) if value_type_id else (),
    )


def _size(explicit: int | None, from_type: int | None, where: str) -> int:
    if explicit is not None and from_type is not None and explicit != from_type:
        raise ObjectError(f"{where}: size {explicit} conflicts with its type's size {from_type}")
    if explicit is not None:
        return explicit
    return from_type or 0


def _values(
    btf: Btf,
    name: str,
    mtype: MapType,
    values: BtfType,
    value_size: int,
    section: str,
    where: str,
    inner_of: str | None,
) -> tuple[MapSpec | None, int]:
    """``__array(values, T)`` is ``T *values[]``: the inner map definition (map-in-map) or a
    function prototype (program array). Either way the map's values are 4-byte fds/ids."""
    if values.kind is not Kind.ARRAY or btf.array(values)[2] != 0:
        raise ObjectError(f"{where}: 'values' must be a zero-length array (__array), got {btf.describe(values)}")
    ptr = btf.skip_mods(btf.array(values)[0])
    if ptr.kind is not Kind.PTR:
        raise ObjectError(f"{where}: 'values' elements must be pointers, got {btf.describe(ptr)}")
    if value_size not in (0, 4):
        raise ObjectError(f"{where}: value size {value_size} of a map with 'values' must be 4")
    target = btf.skip_mods(ptr.size_or_type)
    if mtype in MAP_IN_MAP_TYPES:
        if inner_of is not None:
            raise UnsupportedError(f"unsupported: {where}: nested map-in-map")
        if target.kind is not Kind.STRUCT:
            raise ObjectError(f"{where}: 'values' of a map-in-map must point to a map definition struct")
        return _parse(btf, name, target.id, section, inner_of=name), 4
    if mtype is MapType.ProgArray:
        if target.kind is not Kind.FUNC_PROTO:
            raise ObjectError(f"{where}: 'values' of a program array must point to a function prototype")
        return None, 4
    raise ObjectError(f"{where}: 'values' is only valid for map-in-map and program arrays, not {mtype.name}")
